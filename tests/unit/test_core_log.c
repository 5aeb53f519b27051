/* test_core_log: cy_log's two formats and the connection summary.
 *
 * stderr is pointed at a temporary file around each call, so the test sees
 * exactly the bytes a log shipper would. JSON lines must hold whatever a
 * client sends (quotes, backslashes, control characters, bytes that are
 * not UTF-8, a message longer than the line) and stay one valid line; the
 * text format must stay what it was (tests and operators grep it). The
 * summary is driven with an injected clock: a line only once the interval
 * has passed and only when something happened.
 */
#include "core/cy_log.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static char out[65536];
static int saved = -1;
static FILE *cap;

static void capture(void)
{
    fflush(stderr);
    cap = tmpfile();
    assert_non_null(cap);
    saved = dup(2);
    assert_true(saved >= 0);
    assert_int_equal(dup2(fileno(cap), 2), 2);
}

/* Stop capturing; the bytes logged meanwhile, NUL-terminated, in out. */
static const char *captured(void)
{
    fflush(stderr);
    assert_int_equal(dup2(saved, 2), 2);
    close(saved);
    rewind(cap);
    size_t n = fread(out, 1, sizeof(out) - 1, cap);
    out[n] = '\0';
    fclose(cap);
    return out;
}

static void reset(void)
{
    cy_log_set_level(CY_LOG_DEBUG);
    cy_log_set_format(CY_LOG_TEXT);
    cy_log_set_tag(NULL);
    cy_log_set_process(NULL);
}

static void test_parse(void **state)
{
    (void)state;
    cy_log_format f = CY_LOG_JSON;
    assert_int_equal(cy_log_parse_format("text", &f), 0);
    assert_int_equal(f, CY_LOG_TEXT);
    assert_int_equal(cy_log_parse_format("json", &f), 0);
    assert_int_equal(f, CY_LOG_JSON);
    assert_true(cy_log_parse_format("JSON", &f) < 0);
    assert_true(cy_log_parse_format("", &f) < 0);
    assert_int_equal(f, CY_LOG_JSON); /* unchanged by a refusal */
}

static void test_text_unchanged(void **state)
{
    (void)state;
    reset();
    cy_log_set_tag("shard=3");
    capture();
    cy_info("dev-1", "connected from %s", "10.0.0.7:41460");
    cy_warn(NULL, "two\nlines");
    const char *s = captured();
    /* 2026-11-24T03:08:20.123Z INFO  shard=3 client=dev-1 connected ... */
    const char *nl = strchr(s, '\n');
    assert_non_null(nl);
    assert_true(strlen(s) > 24 && s[4] == '-' && s[10] == 'T' && s[23] == 'Z');
    assert_memory_equal(s + 24, " INFO  shard=3 client=dev-1 connected from 10.0.0.7:41460\n",
                        strlen(" INFO  shard=3 client=dev-1 connected from 10.0.0.7:41460\n"));
    assert_non_null(strstr(nl + 1, " WARN  shard=3 two?lines\n")); /* no forged line */
    /* Below the level: nothing. */
    cy_log_set_level(CY_LOG_INFO);
    capture();
    cy_debug(NULL, "quiet");
    assert_string_equal(captured(), "");
    reset();
}

static void test_json_fields(void **state)
{
    (void)state;
    reset();
    cy_log_set_format(CY_LOG_JSON);
    cy_log_set_tag("shard=12");
    capture();
    int line = __LINE__ + 1;
    cy_info("dev-1", "connected");
    const char *s = captured();
    char want[256];
    assert_memory_equal(s, "{\"time\":\"", 9);
    assert_int_equal(s[9 + 23], 'Z');
    assert_memory_equal(s + 9 + 24,
                        "\",\"level\":\"info\",\"process\":\"shard\",\"shard\":12,"
                        "\"source\":\"",
                        strlen("\",\"level\":\"info\",\"process\":\"shard\",\"shard\":12,"
                               "\"source\":\""));
    snprintf(want, sizeof(want),
             "test_core_log.c:%d\",\"client\":\"dev-1\",\"message\":\"connected\"}\n", line);
    assert_non_null(strstr(s, want));
    assert_string_equal(strstr(s, want), want); /* and the line ends there */

    /* The monitor's tag is its process; without a tag, the name set. */
    cy_log_set_tag("monitor");
    capture();
    cy_error(NULL, "x");
    s = captured();
    assert_non_null(strstr(s, "\"level\":\"error\",\"process\":\"monitor\",\"source\":"));
    assert_null(strstr(s, "\"client\""));
    assert_null(strstr(s, "\"shard\""));
    cy_log_set_tag(NULL);
    cy_log_set_process("supervisor");
    capture();
    cy_warn(NULL, "y");
    cy_debug(NULL, "z");
    s = captured();
    assert_non_null(strstr(s, "\"level\":\"warn\",\"process\":\"supervisor\""));
    assert_non_null(strstr(s, "\"level\":\"debug\",\"process\":\"supervisor\""));
    /* A tag that only looks like a shard's is a name. */
    cy_log_set_tag("shard=x");
    capture();
    cy_info(NULL, "w");
    assert_non_null(strstr(captured(), "\"process\":\"shard=x\",\"source\""));
    reset();
}

static void test_json_escaping(void **state)
{
    (void)state;
    reset();
    cy_log_set_format(CY_LOG_JSON);
    capture();
    /* quotes, a backslash, newline, tab, CR, a control byte, DEL (allowed
     * as is), valid UTF-8 (2 and 4 bytes), then what is not UTF-8: a lone
     * continuation, an overlong NUL, a surrogate, a code point past
     * U+10FFFF, a sequence cut by the end. */
    cy_info("c\"l\\i", "a\"b\\c\nd\te\rf\x01g\x7fh \xc3\xa9 \xf0\x9f\x98\x80 |\x80|\xc0\x80|"
                       "\xed\xa0\x80|\xf4\x90\x80\x80|\xe2\x82");
    const char *s = captured();
    assert_non_null(strstr(s, "\"client\":\"c\\\"l\\\\i\""));
    const char *want =
        "\"message\":\"a\\\"b\\\\c\\nd\\te\\rf\\u0001g\x7fh \xc3\xa9 \xf0\x9f\x98\x80 "
        "|\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd|"
        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|"
        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|"
        "\xef\xbf\xbd\xef\xbf\xbd\"}\n";
    assert_non_null(strstr(s, want));
    assert_int_equal(strchr(s, '\n') - s + 1, (long)strlen(s)); /* one line */

    /* The longest message and client there can be, all escapes: bounded,
     * still one closed object. */
    char big[3000];
    memset(big, '"', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    capture();
    cy_info(big, "%s", big);
    s = captured();
    size_t n = strlen(s);
    assert_true(n > 1000 && n < 8192);
    assert_memory_equal(s + n - 3, "\"}\n", 3);
    assert_int_equal(strchr(s, '\n') - s + 1, (long)n);
    /* cut between escapes, never inside one: the last escape is whole */
    assert_memory_equal(s + n - 5, "\\\"", 2);
    reset();
}

static void test_summary(void **state)
{
    (void)state;
    reset();
    cy_log_set_level(CY_LOG_INFO);
    cy_connsum_reset();
    /* What is counted before the first tick belongs to the first interval. */
    cy_connsum_opened(CY_CONN_MQTT);
    capture();
    assert_int_equal(cy_connsum_tick(1000, 60, 0, 0, 0), 0);
    cy_connsum_opened(CY_CONN_MQTT);
    cy_connsum_opened(CY_CONN_MQTT);
    cy_connsum_opened(CY_CONN_MQTTS);
    cy_connsum_opened(CY_CONN_COAPS);
    cy_connsum_closed(CY_CONN_MQTT);
    cy_connsum_closed(CY_CONN_RELAYED);
    assert_int_equal(cy_connsum_tick(60999, 60, 2, 0, 0), 0); /* 1 ms early */
    assert_int_equal(cy_connsum_tick(61000, 60, 3, 140, 12), 1);
    /* Nothing since: no line, however long. */
    assert_int_equal(cy_connsum_tick(200000, 60, 3, 140, 12), 0);
    /* Refusals alone are something. */
    assert_int_equal(cy_connsum_tick(261000, 60, 8, 140, 12), 1);
    /* Off: nothing, and what was counted meanwhile is dropped. */
    cy_connsum_opened(CY_CONN_WS);
    assert_int_equal(cy_connsum_tick(400000, 0, 8, 0, 0), 0);
    assert_int_equal(cy_connsum_tick(400000, 1, 8, 0, 0), 0); /* starts again */
    cy_connsum_opened(CY_CONN_WS);
    cy_connsum_closed(CY_CONN_COAP);
    assert_int_equal(cy_connsum_tick(401000, 1, 8, 1, 0), 1);
    /* A refused count that went back (a new process's) starts over. */
    assert_int_equal(cy_connsum_tick(500000, 1, 3, 1, 0), 0);
    assert_int_equal(cy_connsum_tick(501500, 1, 3, 1, 0), 0);
    /* Turned on by a reload: what comes before the first tick is kept. */
    assert_int_equal(cy_connsum_tick(600000, 0, 3, 0, 0), 0);
    cy_connsum_closed(CY_CONN_MQTT);
    assert_int_equal(cy_connsum_tick(600100, 1, 3, 0, 0), 0);
    assert_int_equal(cy_connsum_tick(601100, 1, 4, 0, 0), 1);
    const char *s = captured();
    assert_non_null(strstr(s, "INFO  connections in the last 60 s: 5 opened (mqtt 3, mqtts 1, "
                              "coaps 1), 2 closed (mqtt 1, tls/ws 1), 3 refused; open now: 140 "
                              "MQTT, 12 CoAP\n"));
    assert_non_null(strstr(s, "INFO  connections in the last 61 s: 0 opened, 0 closed, 5 "
                              "refused; open now: 140 MQTT, 12 CoAP\n"));
    assert_non_null(strstr(s, "INFO  connections in the last 1 s: 1 opened (ws 1), 1 closed "
                              "(coap 1), 0 refused; open now: 1 MQTT, 0 CoAP\n"));
    assert_non_null(strstr(s, "INFO  connections in the last 1 s: 0 opened, 1 closed (mqtt 1), "
                              "1 refused; open now: 0 MQTT, 0 CoAP\n"));
    int lines = 0;
    for (const char *p = s; (p = strchr(p, '\n')); p++)
        lines++;
    assert_int_equal(lines, 4);
    /* At warn the line is not written (it is info). */
    cy_log_set_level(CY_LOG_WARN);
    cy_connsum_reset();
    capture();
    cy_connsum_tick(1000, 1, 0, 0, 0);
    cy_connsum_opened(CY_CONN_MQTT);
    cy_connsum_tick(3000, 1, 0, 0, 0);
    assert_string_equal(captured(), "");
    cy_connsum_reset();
    reset();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),       cmocka_unit_test(test_text_unchanged),
        cmocka_unit_test(test_json_fields), cmocka_unit_test(test_json_escaping),
        cmocka_unit_test(test_summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
