/* Unit tests for webhooks/policy: what an answer means, the backoff
 * schedule and its jitter, Retry-After, the circuit breaker, private
 * addresses (every range at both edges, and one address past each edge) and
 * webhook URLs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/cy_err.h"
#include "webhooks/policy.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static void test_classify(void **state)
{
    (void)state;
    long delivered[] = {200, 201, 202, 204, 299};
    long retry[] = {0, -1, 408, 429, 500, 502, 503, 504, 599};
    long dead[] = {100, 101, 199, 300, 301, 302, 304, 307, 308, 400, 401, 403,
                   404, 405, 409, 411, 413, 422, 428, 430, 499, 600, 999};
    for (size_t i = 0; i < sizeof(delivered) / sizeof(long); i++)
        assert_int_equal(cy_wh_classify(delivered[i]), CY_WH_DELIVERED);
    for (size_t i = 0; i < sizeof(retry) / sizeof(long); i++)
        assert_int_equal(cy_wh_classify(retry[i]), CY_WH_RETRY);
    for (size_t i = 0; i < sizeof(dead) / sizeof(long); i++)
        if (cy_wh_classify(dead[i]) != CY_WH_DEAD) fail_msg("status %ld not dead", dead[i]);
    assert_int_equal(cy_wh_classify(410), CY_WH_GONE);
}

static void test_backoff(void **state)
{
    (void)state;
    /* rnd 0.5: no jitter. base 5 s: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h... */
    const int64_t want[] = {5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000};
    for (unsigned f = 1; f <= 7; f++)
        assert_int_equal(cy_wh_backoff_ms(f, 5000, 0.5), want[f - 1]);
    assert_int_equal(cy_wh_backoff_ms(1000000, 5000, 0.5), 36000000);
    assert_int_equal(cy_wh_backoff_ms(0, 5000, 0.5), 5000); /* as the first */
    /* Jitter: +-20%, the extremes at rnd 0 and just under 1. */
    assert_int_equal(cy_wh_backoff_ms(1, 5000, 0.0), 4000);
    assert_int_equal(cy_wh_backoff_ms(2, 5000, 0.0), 240000);
    int64_t hi = cy_wh_backoff_ms(1, 5000, 0.999999);
    assert_true(hi > 5990 && hi < 6000);
    assert_true(cy_wh_backoff_ms(3, 5000, 0.25) < cy_wh_backoff_ms(3, 5000, 0.75));
    /* rnd out of [0, 1): no jitter rather than a wild wait. */
    assert_int_equal(cy_wh_backoff_ms(1, 5000, 1.0), 5000);
    assert_int_equal(cy_wh_backoff_ms(1, 5000, -3.0), 5000);
    assert_int_equal(cy_wh_backoff_ms(1, 5000, NAN), 5000);
    /* Other bases scale; the largest does not overflow. */
    assert_int_equal(cy_wh_backoff_ms(2, 1000, 0.5), 60000);
    assert_int_equal(cy_wh_backoff_ms(1, 0, 0.3), 0);
    assert_int_equal(cy_wh_backoff_ms(9, UINT32_MAX, 0.5), (int64_t)UINT32_MAX * 7200);
}

static void test_retry_after(void **state)
{
    (void)state;
    const int64_t max = CY_WH_RETRY_AFTER_MAX_MS;
    /* 1994-11-06T08:49:37Z = 784111777 */
    const int64_t now = 784111777000LL;
    assert_int_equal(cy_wh_retry_after_ms("0", now), 0);
    assert_int_equal(cy_wh_retry_after_ms("120", now), 120000);
    assert_int_equal(cy_wh_retry_after_ms(" 7\t", now), 7000);
    assert_int_equal(cy_wh_retry_after_ms("21600", now), max);
    assert_int_equal(cy_wh_retry_after_ms("21599", now), 21599000);
    assert_int_equal(cy_wh_retry_after_ms("99999999999999999999999999", now), max);
    assert_int_equal(cy_wh_retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", now), 0);
    assert_int_equal(cy_wh_retry_after_ms("Sun, 06 Nov 1994 08:50:37 GMT", now), 60000);
    assert_int_equal(cy_wh_retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", now - 1500), 1500);
    assert_int_equal(cy_wh_retry_after_ms("Sat, 05 Nov 1994 08:49:37 GMT", now), 0); /* past */
    assert_int_equal(cy_wh_retry_after_ms("Fri, 01 Jan 2100 00:00:00 GMT", now), max);
    assert_int_equal(cy_wh_retry_after_ms("Thu, 29 Feb 1996 00:00:00 GMT", 825552000000LL), 0);
    assert_int_equal(cy_wh_retry_after_ms("Tue, 01 Mar 2022 00:00:01 GMT", 1646092800000LL), 1000);
    static const char *bad[] = {
        "",
        "   ",
        "-1",
        "+5",
        "1.5",
        "5s",
        "5 5",
        "0x10",
        "soon",
        "Sunday, 06-Nov-94 08:49:37 GMT", /* RFC 850 */
        "Sun Nov  6 08:49:37 1994",       /* asctime */
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 nov 1994 08:49:37 GMT",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "Sun, 29 Feb 1995 08:49:37 GMT", /* not a leap year */
        "Sun, 29 Feb 1900 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT x",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (cy_wh_retry_after_ms(bad[i], now) != -1) fail_msg("accepted \"%s\"", bad[i]);
    assert_int_equal(cy_wh_retry_after_ms(NULL, now), -1);
    /* A leap second and 29 Feb 2000 parse. */
    assert_int_equal(cy_wh_retry_after_ms("Sat, 31 Dec 2016 23:59:60 GMT", 1483228800000LL), 0);
    assert_true(cy_wh_retry_after_ms("Tue, 29 Feb 2000 00:00:00 GMT", 0) == max);
}

static void test_circuit(void **state)
{
    (void)state;
    cy_wh_circuit c;
    cy_wh_circuit_init(&c);
    bool probe = true;
    int64_t t = 1000;
    assert_int_equal(c.state, CY_WH_CLOSED);
    assert_true(cy_wh_circuit_allow(&c, t, &probe));
    assert_false(probe);
    /* Failures in a row, but a success between resets the count. */
    for (int i = 0; i < CY_WH_CIRCUIT_FAILURES - 1; i++)
        cy_wh_circuit_result(&c, false, t);
    cy_wh_circuit_result(&c, true, t);
    assert_int_equal(c.failures, 0);
    for (int i = 0; i < CY_WH_CIRCUIT_FAILURES - 1; i++) {
        cy_wh_circuit_result(&c, false, t);
        assert_int_equal(c.state, CY_WH_CLOSED);
    }
    cy_wh_circuit_result(&c, false, t); /* the 5th opens it */
    assert_int_equal(c.state, CY_WH_OPEN);
    assert_int_equal(c.open_until, t + CY_WH_CIRCUIT_OPEN_MS);
    assert_false(cy_wh_circuit_allow(&c, t + CY_WH_CIRCUIT_OPEN_MS - 1, NULL));
    /* A late failure of a request from before it opened extends nothing. */
    cy_wh_circuit_result(&c, false, t + 100);
    assert_int_equal(c.open_until, t + CY_WH_CIRCUIT_OPEN_MS);
    /* Time up: one probe, and only one. */
    t += CY_WH_CIRCUIT_OPEN_MS;
    assert_true(cy_wh_circuit_allow(&c, t, &probe));
    assert_true(probe);
    assert_int_equal(c.state, CY_WH_HALF_OPEN);
    assert_false(cy_wh_circuit_allow(&c, t, &probe));
    assert_false(probe);
    assert_false(cy_wh_circuit_allow(&c, t + 100000, NULL));
    /* The probe fails: open again for twice as long, and so on up to the cap. */
    int64_t rest = CY_WH_CIRCUIT_OPEN_MS;
    for (int i = 0; i < 12; i++) {
        cy_wh_circuit_result(&c, false, t);
        rest = rest * 2 > CY_WH_CIRCUIT_OPEN_MAX_MS ? CY_WH_CIRCUIT_OPEN_MAX_MS : rest * 2;
        assert_int_equal(c.state, CY_WH_OPEN);
        assert_int_equal(c.open_until, t + rest);
        assert_false(cy_wh_circuit_allow(&c, t + rest - 1, NULL));
        t += rest;
        assert_true(cy_wh_circuit_allow(&c, t, &probe));
        assert_true(probe);
    }
    assert_int_equal(rest, CY_WH_CIRCUIT_OPEN_MAX_MS);
    /* The probe succeeds: closed, counts reset; a new opening starts short. */
    cy_wh_circuit_result(&c, true, t);
    assert_int_equal(c.state, CY_WH_CLOSED);
    assert_int_equal(c.opens, 0);
    assert_false(c.probing);
    assert_true(cy_wh_circuit_allow(&c, t, &probe));
    assert_false(probe);
    for (int i = 0; i < CY_WH_CIRCUIT_FAILURES; i++)
        cy_wh_circuit_result(&c, false, t);
    assert_int_equal(c.open_until, t + CY_WH_CIRCUIT_OPEN_MS);
    /* An allow long after the end of a rest also probes. */
    assert_true(cy_wh_circuit_allow(&c, t + 999999999, NULL));
    assert_int_equal(c.state, CY_WH_HALF_OPEN);
}

/* Whether the address text (IPv4 or IPv6) is private. */
static bool priv(const char *text)
{
    struct sockaddr_in in = {.sin_family = AF_INET};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    if (inet_pton(AF_INET, text, &in.sin_addr) == 1)
        return cy_wh_addr_private((struct sockaddr *)&in);
    if (inet_pton(AF_INET6, text, &in6.sin6_addr) == 1)
        return cy_wh_addr_private((struct sockaddr *)&in6);
    fail_msg("bad address in the test: %s", text);
    return false;
}

static void check_all(const char *const *list, size_t n, bool want)
{
    for (size_t i = 0; i < n; i++)
        if (priv(list[i]) != want)
            fail_msg("%s should be %s", list[i], want ? "private" : "public");
}

static void test_private_v4(void **state)
{
    (void)state;
    static const char *yes[] = {
        "0.0.0.0",         "0.255.255.255",   "10.0.0.0",        "10.255.255.255",
        "100.64.0.0",      "100.127.255.255", "127.0.0.0",       "127.0.0.1",
        "127.255.255.255", "169.254.0.0",     "169.254.169.254", "169.254.255.255",
        "172.16.0.0",      "172.31.255.255",  "192.168.0.0",     "192.168.255.255",
        "224.0.0.0",       "239.255.255.255", "240.0.0.0",       "255.255.255.255",
    };
    static const char *no[] = {
        "1.0.0.0",    "1.1.1.1",         "8.8.8.8",      "9.255.255.255",
        "11.0.0.0",   "100.63.255.255",  "100.128.0.0",  "126.255.255.255",
        "128.0.0.0",  "169.253.255.255", "169.255.0.0",  "172.15.255.255",
        "172.32.0.0", "192.167.255.255", "192.169.0.0",  "223.255.255.255",
        "192.0.2.1",  "203.0.113.7",     "198.51.100.1",
    };
    check_all(yes, sizeof(yes) / sizeof(yes[0]), true);
    check_all(no, sizeof(no) / sizeof(no[0]), false);
}

static void test_private_v6(void **state)
{
    (void)state;
    static const char *yes[] = {
        "::",
        "::1",
        "fc00::",
        "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe80::",
        "fe80::1",
        "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fec0::1",
        "feff::1", /* the end of fec0::/10 */
        "ff00::",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::ffff:169.254.169.254",
        "::ffff:172.16.0.0",
        "::ffff:100.64.0.0",
        "::ffff:0.0.0.0",
        "::ffff:255.255.255.255",
        "::127.0.0.1",          /* IPv4-compatible (deprecated) */
        "::ffff:0:192.168.1.1", /* IPv4-translated */
        "64:ff9b::127.0.0.1",   /* NAT64 */
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",     /* 6to4 of 127.0.0.1 */
        "2002:c0a8:0101::1", /* 6to4 of 192.168.1.1 */
    };
    static const char *no[] = {
        "::2:0:0:0", /* not the compatible form: judged as IPv6 */
        "2001:4860:4860::8888",
        "2606:4700:4700::1111",
        "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe00::",
        "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::ffff:8.8.8.8",
        "::ffff:172.15.255.255",
        "::ffff:100.63.255.255",
        "::8.8.8.8",
        "64:ff9b::8.8.8.8",
        "64:ff9b:1::127.0.0.1", /* not the well-known prefix */
        "2002:0808:0808::",
        "2003:7f00:1::",
    };
    check_all(yes, sizeof(yes) / sizeof(yes[0]), true);
    check_all(no, sizeof(no) / sizeof(no[0]), false);
    struct sockaddr sa = {.sa_family = AF_UNIX};
    assert_true(cy_wh_addr_private(&sa));
    assert_true(cy_wh_addr_private(NULL));
}

static void url_ok(const char *url, bool allow)
{
    char why[128] = "unset";
    int rc = cy_wh_url_check(url, allow, why, sizeof(why));
    if (rc != 0) fail_msg("refused %s: %s", url, why);
    assert_string_equal(why, "");
}

static void url_bad(const char *url, bool allow, const char *reason)
{
    char why[128] = "";
    int rc = cy_wh_url_check(url, allow, why, sizeof(why));
    const char *shown = url ? url : "(null)";
    if (rc != CY_EINVAL) fail_msg("accepted %s", shown);
    if (!strstr(why, reason)) fail_msg("%s: why \"%s\" lacks \"%s\"", shown, why, reason);
}

static void test_url(void **state)
{
    (void)state;
    url_ok("https://example.com/hook", false);
    url_ok("http://example.com", false);
    url_ok("HTTPS://Example.COM:8443/a/b?c=d#e", false);
    url_ok("https://example.com/hook/{{device_id}}?n={{name}}", false);
    url_ok("https://{{data.host}}/x", false);
    url_ok("http://8.8.8.8:80/", false);
    url_ok("http://[2001:4860:4860::8888]:8080/x", false);
    url_ok("http://localhost:29001/", false); /* a name: checked when connecting */
    url_ok("http://127.0.0.1:29001/hook", true);
    url_ok("http://[::1]/", true);
    url_ok("http://bücher.example/", false);
    url_ok("https://example.com:65535/", false);
    url_ok("https://example.com?x=@", false); /* '@' after the authority */

    url_bad(NULL, false, "empty");
    url_bad("", false, "empty");
    url_bad("ftp://example.com/", false, "http");
    url_bad("file:///etc/passwd", false, "http");
    url_bad("gopher://x", false, "http");
    url_bad("example.com/hook", false, "http");
    url_bad("//example.com/", false, "http");
    url_bad("https:/example.com", false, "http");
    url_bad("https://user:pw@example.com/", false, "user");
    url_bad("https://user@example.com/", false, "user");
    url_bad("https://example.com@127.0.0.1/", true, "user");
    url_bad("https://evil\\@example.com/", false, "user");
    url_bad("https://exa mple.com/", false, "whitespace");
    url_bad("https://example.com/a b", false, "whitespace");
    url_bad("https://example.com/\ta", false, "whitespace");
    url_bad("https://example.com/\r\nX: y", false, "whitespace");
    url_bad("https://example.com/\x7f", false, "control");
    url_bad(" https://example.com/", false, "whitespace");
    url_bad("https://", false, "no host");
    url_bad("https:///path", false, "no host");
    url_bad("https://:80/", false, "no host");
    url_bad("https://?q", false, "no host");
    url_bad("https://[]/", false, "no host");
    url_bad("https://example.com:/", false, "port");
    url_bad("https://example.com:0/", false, "port");
    url_bad("https://example.com:65536/", false, "port");
    url_bad("https://example.com:123456/", false, "port");
    url_bad("https://example.com:8o/", false, "port");
    url_bad("https://example.com:80:80/", false, "port");
    url_bad("https://[::1/", true, "[");
    url_bad("https://[::1]x/", true, "port");
    url_bad("https://[not:an:address]/", true, "IPv6");
    url_bad("https://[fe80::1%25eth0]/", true, "IPv6");
    url_bad("https://exa%6dple.com/", false, "character");
    url_bad("https://a\"b/", false, "character");
    /* Private literals, in the spellings a resolver accepts too. */
    url_bad("http://127.0.0.1/", false, "private");
    url_bad("http://10.0.0.1:8080/x", false, "private");
    url_bad("http://169.254.169.254/latest/meta-data/", false, "private");
    url_bad("http://172.16.0.1/", false, "private");
    url_bad("http://100.64.0.1/", false, "private");
    url_bad("http://0.0.0.0/", false, "private");
    url_bad("http://[::1]/", false, "private");
    url_bad("http://[::ffff:127.0.0.1]/", false, "private");
    url_bad("http://[fe80::1]/", false, "private");
    url_bad("http://[fd00::1]/", false, "private");
    url_bad("http://127.1/", false, "private");
    url_bad("http://2130706433/", false, "private");
    url_bad("http://0x7f000001/", false, "private");
    url_bad("http://0177.0.0.1/", false, "private");
    url_bad("http://10/", false, "private");
    url_ok("http://172.15.255.255/", false);
    url_ok("http://100.63.255.255/", false);

    /* 2048 bytes is the limit. */
    char url[2100];
    strcpy(url, "https://example.com/");
    size_t n = strlen(url);
    memset(url + n, 'a', 2048 - n);
    url[2048] = '\0';
    url_ok(url, false);
    url[2048] = 'a';
    url[2049] = '\0';
    url_bad(url, false, "longer");
    /* why may be NULL or short. */
    assert_int_equal(cy_wh_url_check("ftp://x", false, NULL, 0), CY_EINVAL);
    char tiny[4];
    assert_int_equal(cy_wh_url_check("ftp://x", false, tiny, sizeof(tiny)), CY_EINVAL);
    assert_int_equal(strlen(tiny), 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify),    cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_retry_after), cmocka_unit_test(test_circuit),
        cmocka_unit_test(test_private_v4),  cmocka_unit_test(test_private_v6),
        cmocka_unit_test(test_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
