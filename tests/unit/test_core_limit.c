/* test_core_limit: the limits against abuse (core/cy_limit.h): the token
 * bucket (GCRA) of one owner, publish rates, the node's table of failed
 * logins (windows, slow, locked, the id rules, exemptions, IPv6 /64s),
 * connection rates, eviction, the shared file seen by two handles and two
 * processes. Every clock is injected.
 */
#include "core/cy_clock.h"
#include "core/cy_config.h"
#include "core/cy_err.h"
#include "core/cy_limit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

/* A sockaddr for text (IPv4 or IPv6). */
static const struct sockaddr *sa_of(const char *ip, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(40000);
    } else {
        assert_int_equal(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(40000);
    }
    return (const struct sockaddr *)ss;
}

/* Settings of the auth tests: slow at 3, locked at 5 within 10 s, for 60 s. */
static void auth_cfg(cy_config *c)
{
    cy_config_defaults(c);
    c->auth_fail_burst = 3;
    c->auth_fail_lockout_after = 5;
    c->auth_fail_window = 10;
    c->auth_lockout = 60;
    c->auth_fail_delay = 500;
    strcpy(c->limits_exempt, "192.0.2.0/24");
}

/* A monotonic ms after the tables' epoch (their creation): times before
 * it do not happen in a node, whose supervisor makes the table first. */
static int64_t T0;

static int check(cy_limit *l, const char *ip, const char *id, bool delayed, int64_t now,
                 int64_t *retry)
{
    struct sockaddr_storage ss;
    return cy_limit_auth_check(l, sa_of(ip, &ss), id, id ? strlen(id) : 0, delayed, now, retry);
}

static unsigned fail_at(cy_limit *l, const char *ip, const char *id, bool exists, int64_t now)
{
    struct sockaddr_storage ss;
    return cy_limit_auth_failed(l, sa_of(ip, &ss), id, id ? strlen(id) : 0, exists, now);
}

static uint32_t addr_failures(cy_limit *l, const char *ip, int64_t now, bool *locked)
{
    struct sockaddr_storage ss;
    return cy_limit_failures(l, sa_of(ip, &ss), NULL, 0, now, locked);
}

/* ---- one owner's rate ---- */

static void test_rate_take_burst_then_rate(void **state)
{
    (void)state;
    int64_t tat = 0, now = 5000000;
    /* 10/s (100 ms each), a burst of 1 s: 11 at once (debt 0 .. 1 s), then none. */
    int n = 0;
    while (cy_rate_take(&tat, now, 100000, 1000000))
        n++;
    assert_int_equal(n, 11);
    assert_int_equal(cy_rate_wait(tat, now, 1000000), 100000);
    assert_false(cy_rate_take(&tat, now + 99999, 100000, 1000000));
    assert_true(cy_rate_take(&tat, now + 100000, 100000, 1000000));
    assert_false(cy_rate_take(&tat, now + 100000, 100000, 1000000));
    /* Idle long enough: the whole burst again, never more. */
    now += 100 * 1000000LL;
    n = 0;
    while (cy_rate_take(&tat, now, 100000, 1000000))
        n++;
    assert_int_equal(n, 11);
}

static void test_rate_large_use_passes_then_waits(void **state)
{
    (void)state;
    /* 1000 bytes/s: a use of 5000 bytes passes on an empty bucket, then
     * nothing until its debt is paid down to the burst (4 s later). */
    int64_t tat = 0, now = 1000000;
    assert_true(cy_rate_take(&tat, now, 5000000, 1000000));
    assert_false(cy_rate_take(&tat, now + 1, 1000, 1000000));
    assert_int_equal(cy_rate_wait(tat, now, 1000000), 4000000);
    assert_false(cy_rate_take(&tat, now + 3999999, 1000, 1000000));
    assert_true(cy_rate_take(&tat, now + 4000000, 1000, 1000000));
    /* charge takes it whatever the debt */
    cy_rate_charge(&tat, now + 4000000, 10000000);
    assert_true(cy_rate_wait(tat, now + 4000000, 1000000) > 10000000);
}

static void test_pub_rate_messages_and_bytes(void **state)
{
    (void)state;
    cy_config c;
    cy_config_defaults(&c);
    assert_false(cy_pub_rate_on(&c)); /* off by default */
    cy_pub_rate r = {0, 0};
    assert_int_equal(cy_pub_rate_wait(&r, &c, 1), 0);
    c.max_publish_rate = 4; /* 250 ms each: 5 at once */
    assert_true(cy_pub_rate_on(&c));
    int64_t now = 7000000;
    int n = 0;
    while (cy_pub_rate_take(&r, &c, 100, now))
        n++;
    assert_int_equal(n, 5);
    assert_int_equal(cy_pub_rate_wait(&r, &c, now), 250000);
    assert_true(cy_pub_rate_take(&r, &c, 100, now + 250000));
    /* bytes: 1000 B/s; the message rate is not what stops these */
    memset(&r, 0, sizeof(r));
    c.max_publish_rate = 0;
    c.max_publish_bytes_rate = 1000;
    assert_true(cy_pub_rate_take(&r, &c, 1500, now)); /* debt 1.5 s */
    assert_false(cy_pub_rate_take(&r, &c, 1, now));   /* over the 1 s burst */
    assert_int_equal(cy_pub_rate_wait(&r, &c, now), 500000);
    /* A refused take charges nothing. */
    assert_int_equal(cy_pub_rate_wait(&r, &c, now), 500000);
    /* charge: taken anyway; says whether it is still within the rate */
    assert_true(cy_pub_rate_charge(&r, &c, 0, now + 500000));
    assert_false(cy_pub_rate_charge(&r, &c, 10, now + 500000));
}

/* ---- limits_exempt ---- */

static void test_exempt_lists(void **state)
{
    (void)state;
    char err[128];
    assert_int_equal(cy_limit_exempt_check("", err, sizeof(err)), 0);
    assert_int_equal(cy_limit_exempt_check("127.0.0.0/8, ::1", err, sizeof(err)), 0);
    assert_int_equal(
        cy_limit_exempt_check("10.1.2.3 2001:db8::/32,,192.0.2.0/24", err, sizeof(err)), 0);
    const char *bad[] = {"127.0.0.0/33",
                         "::1/129",
                         "localhost",
                         "10.0.0.1/",
                         "10.0.0.1/-1",
                         "10.0.0.1/8x",
                         "1.2.3.4.5",
                         "1.1.1.1 1.1.1.2 1.1.1.3 1.1.1.4 1.1.1.5 1.1.1.6 1.1.1.7 1.1.1.8 "
                         "1.1.1.9 1.1.1.10 1.1.1.11 1.1.1.12 1.1.1.13 1.1.1.14 1.1.1.15 "
                         "1.1.1.16 1.1.1.17"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(cy_limit_exempt_check(bad[i], err, sizeof(err)), CY_EINVAL);
        assert_true(err[0] == '\'' || strncmp(err, "more than", 9) == 0);
    }
    /* The config refuses it too, naming the entry. */
    cy_config c;
    cy_config_defaults(&c);
    cy_config_error e;
    assert_int_equal(cy_config_set(&c, "limits_exempt", "10.0.0.0/8, nonsense", &e), CY_ECONFIG);
    assert_non_null(strstr(e.msg, "nonsense"));
    assert_int_equal(cy_config_set(&c, "limits_exempt", "10.0.0.0/8", &e), 0);

    cy_config d;
    cy_config_defaults(&d);
    cy_limit *l;
    assert_int_equal(cy_limit_new(&d, &l), 0);
    struct sockaddr_storage ss;
    assert_true(cy_limit_exempt(l, sa_of("127.0.0.1", &ss)));
    assert_true(cy_limit_exempt(l, sa_of("127.255.0.9", &ss)));
    assert_true(cy_limit_exempt(l, sa_of("::1", &ss)));
    assert_true(cy_limit_exempt(l, sa_of("::ffff:127.0.0.1", &ss))); /* mapped: IPv4 */
    assert_false(cy_limit_exempt(l, sa_of("128.0.0.1", &ss)));
    assert_false(cy_limit_exempt(l, sa_of("::2", &ss)));
    assert_false(cy_limit_exempt(l, NULL));
    cy_limit_free(l);
    /* A handle refuses a bad list. */
    strcpy(d.limits_exempt, "300.0.0.1");
    assert_int_equal(cy_limit_new(&d, &l), CY_EINVAL);
    assert_null(l);
}

/* ---- failed logins ---- */

static void test_auth_address_slow_then_locked(void **state)
{
    (void)state;
    cy_config c;
    auth_cfg(&c);
    cy_limit *l;
    assert_int_equal(cy_limit_new(&c, &l), 0);
    int64_t t = T0, retry = -1;
    assert_int_equal(check(l, "10.0.0.1", "dev", false, t, &retry), CY_LIMIT_GO);
    assert_int_equal(retry, 0);
    assert_int_equal(fail_at(l, "10.0.0.1", "dev", false, t), 0);
    assert_int_equal(fail_at(l, "10.0.0.1", "dev", false, t + 1), 0);
    assert_int_equal(check(l, "10.0.0.1", NULL, false, t + 2, NULL), CY_LIMIT_GO);
    assert_int_equal(fail_at(l, "10.0.0.1", NULL, false, t + 2), CY_LIMIT_ADDR_SLOW_NOW);
    assert_int_equal(check(l, "10.0.0.1", NULL, false, t + 3, &retry), CY_LIMIT_DELAY);
    assert_int_equal(retry, 500);
    /* Once held, it is checked. Other addresses are not touched. */
    assert_int_equal(check(l, "10.0.0.1", NULL, true, t + 3, NULL), CY_LIMIT_GO);
    assert_int_equal(check(l, "10.0.0.2", NULL, false, t + 3, NULL), CY_LIMIT_GO);
    assert_int_equal(fail_at(l, "10.0.0.1", NULL, false, t + 4), 0);
    assert_int_equal(fail_at(l, "10.0.0.1", NULL, false, t + 5), CY_LIMIT_ADDR_LOCKED_NOW);
    bool locked = false;
    assert_int_equal(addr_failures(l, "10.0.0.1", t + 5, &locked), 5);
    assert_true(locked);
    /* Locked: refused unchecked, held or not, for 60 s from the 5th failure. */
    assert_int_equal(check(l, "10.0.0.1", NULL, false, t + 6, &retry), CY_LIMIT_LOCKED);
    assert_int_equal(retry, 60000 - 1);
    assert_int_equal(check(l, "10.0.0.1", "other", true, t + 6, NULL), CY_LIMIT_LOCKED);
    assert_int_equal(check(l, "10.0.0.1", NULL, false, t + 5 + 59999, NULL), CY_LIMIT_LOCKED);
    /* An operator's reload with auth_fail_lockout_after 0 lifts it (slow stays). */
    c.auth_fail_lockout_after = 0;
    assert_int_equal(check(l, "10.0.0.1", NULL, false, t + 7, NULL), CY_LIMIT_DELAY);
    c.auth_fail_lockout_after = 5;
    /* The window (10 s) ended long before: free and clean again. */
    assert_int_equal(check(l, "10.0.0.1", NULL, false, t + 5 + 60000, &retry), CY_LIMIT_GO);
    assert_int_equal(addr_failures(l, "10.0.0.1", t + 5 + 60000, &locked), 0);
    assert_false(locked);
    cy_limit_free(l);
}

static void test_auth_window_restarts(void **state)
{
    (void)state;
    cy_config c;
    auth_cfg(&c);
    cy_limit *l;
    assert_int_equal(cy_limit_new(&c, &l), 0);
    int64_t t = T0;
    fail_at(l, "10.0.0.1", NULL, false, t);
    fail_at(l, "10.0.0.1", NULL, false, t + 9000);
    /* The window runs from the first failure: at 10 s it ends. */
    assert_int_equal(addr_failures(l, "10.0.0.1", t + 9999, NULL), 2);
    assert_int_equal(addr_failures(l, "10.0.0.1", t + 10000, NULL), 0);
    assert_int_equal(fail_at(l, "10.0.0.1", NULL, false, t + 10000), 0);
    assert_int_equal(fail_at(l, "10.0.0.1", NULL, false, t + 10001), 0);
    assert_int_equal(addr_failures(l, "10.0.0.1", t + 10001, NULL), 2);
    assert_int_equal(check(l, "10.0.0.1", NULL, false, t + 10002, NULL), CY_LIMIT_GO);
    /* Limits of 0 turn slow and locked off. */
    c.auth_fail_burst = 0;
    c.auth_fail_lockout_after = 0;
    for (int i = 0; i < 50; i++)
        assert_int_equal(fail_at(l, "10.0.0.1", NULL, false, t + 10003), 0);
    assert_int_equal(check(l, "10.0.0.1", NULL, false, t + 10004, NULL), CY_LIMIT_GO);
    cy_limit_free(l);
}

static void test_auth_id_rules(void **state)
{
    (void)state;
    cy_config c;
    auth_cfg(&c);
    cy_limit *l;
    assert_int_equal(cy_limit_new(&c, &l), 0);
    int64_t t = T0;
    /* A botnet: one wrong secret each from many addresses, for device d. */
    char ip[32];
    unsigned bits = 0;
    for (int i = 1; i <= 5; i++) {
        snprintf(ip, sizeof(ip), "10.0.1.%d", i);
        bits |= fail_at(l, ip, "d", true, t);
    }
    assert_int_equal(bits, CY_LIMIT_ID_SLOW_NOW | CY_LIMIT_ID_LOCKED_NOW);
    bool locked = false;
    assert_int_equal(cy_limit_failures(l, NULL, "d", 1, t, &locked), 5);
    assert_true(locked);
    /* An address that failed is refused unchecked; a clean one (the device,
     * from where it always connects) is checked at once. */
    int64_t retry = 0;
    assert_int_equal(check(l, "10.0.1.1", "d", false, t + 1, &retry), CY_LIMIT_LOCKED);
    assert_int_equal(retry, 60000 - 1);
    assert_int_equal(check(l, "10.0.9.9", "d", false, t + 1, NULL), CY_LIMIT_GO);
    assert_int_equal(check(l, "10.0.1.1", "e", false, t + 1, NULL), CY_LIMIT_GO);
    /* Ids that exist nowhere are not counted. */
    for (int i = 0; i < 10; i++)
        fail_at(l, "10.0.2.1", "nobody", false, t);
    assert_int_equal(cy_limit_failures(l, NULL, "nobody", 6, t, NULL), 0);
    cy_limit_free(l);

    /* Slow, not locked: a clean address goes at once, one that failed waits. */
    assert_int_equal(cy_limit_new(&c, &l), 0);
    for (int i = 1; i <= 3; i++) {
        snprintf(ip, sizeof(ip), "10.0.3.%d", i);
        fail_at(l, ip, "d", true, t);
    }
    assert_int_equal(check(l, "10.0.9.9", "d", false, t + 1, NULL), CY_LIMIT_GO);
    assert_int_equal(check(l, "10.0.3.1", "d", false, t + 1, NULL), CY_LIMIT_DELAY);
    assert_int_equal(check(l, "10.0.3.1", "d", true, t + 1, NULL), CY_LIMIT_GO);
    cy_limit_free(l);
}

static void test_auth_exempt_and_ipv6(void **state)
{
    (void)state;
    cy_config c;
    auth_cfg(&c);
    cy_limit *l;
    assert_int_equal(cy_limit_new(&c, &l), 0);
    int64_t t = T0;
    /* Exempt (192.0.2.0/24 here): never slowed or locked by address... */
    for (int i = 0; i < 10; i++)
        assert_int_equal(fail_at(l, "192.0.2.7", "d", false, t) & 3, 0);
    assert_int_equal(check(l, "192.0.2.7", NULL, false, t, NULL), CY_LIMIT_GO);
    /* ...but not clean for a device's lock. */
    for (int i = 0; i < 5; i++)
        fail_at(l, "10.0.0.1", "d", true, t);
    assert_int_equal(check(l, "192.0.2.7", "d", false, t, NULL), CY_LIMIT_LOCKED);
    assert_int_equal(check(l, "192.0.2.8", "d", false, t, NULL), CY_LIMIT_GO);
    /* IPv6 counts by /64: a host that takes a fresh address per attempt is
     * one address. */
    fail_at(l, "2001:db8:1:2::1", NULL, false, t);
    fail_at(l, "2001:db8:1:2::2", NULL, false, t);
    fail_at(l, "2001:db8:1:2:ffff::3", NULL, false, t);
    assert_int_equal(check(l, "2001:db8:1:2::99", NULL, false, t, NULL), CY_LIMIT_DELAY);
    assert_int_equal(check(l, "2001:db8:1:3::1", NULL, false, t, NULL), CY_LIMIT_GO);
    /* IPv4-mapped IPv6 is IPv4. */
    assert_int_equal(addr_failures(l, "::ffff:10.0.0.1", t, NULL), 5);
    char text[64];
    struct sockaddr_storage ss;
    cy_limit_addr_text(sa_of("2001:db8:1:2:3:4:5:6", &ss), text, sizeof(text));
    assert_string_equal(text, "2001:db8:1:2::/64");
    cy_limit_addr_text(sa_of("::ffff:10.0.0.1", &ss), text, sizeof(text));
    assert_string_equal(text, "10.0.0.1");
    cy_limit_addr_text(NULL, text, sizeof(text));
    assert_string_equal(text, "unknown address");
    /* No address at all: nothing to count it by, nothing locked. */
    assert_int_equal(cy_limit_auth_failed(l, NULL, NULL, 0, false, t), 0);
    assert_int_equal(cy_limit_auth_check(l, NULL, NULL, 0, false, t, NULL), CY_LIMIT_GO);
    cy_limit_free(l);
}

static void test_null_handle_limits_nothing(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    const struct sockaddr *sa = sa_of("10.0.0.1", &ss);
    int64_t retry = 7;
    assert_int_equal(cy_limit_auth_check(NULL, sa, "d", 1, false, T0, &retry), CY_LIMIT_GO);
    assert_int_equal(retry, 0);
    assert_int_equal(cy_limit_auth_failed(NULL, sa, "d", 1, true, T0), 0);
    assert_true(cy_limit_connect(NULL, sa, T0));
    assert_false(cy_limit_exempt(NULL, sa));
    assert_int_equal(cy_limit_failures(NULL, sa, NULL, 0, T0, NULL), 0);
    cy_limit_free(NULL);
}

/* ---- connection rate ---- */

static void test_connect_rate(void **state)
{
    (void)state;
    cy_config c;
    cy_config_defaults(&c);
    c.max_connect_rate_per_address = 10; /* 100 ms each */
    c.connect_burst_per_address = 3;
    cy_limit *l;
    assert_int_equal(cy_limit_new(&c, &l), 0);
    struct sockaddr_storage a, b, lo;
    sa_of("10.0.0.1", &a);
    sa_of("10.0.0.2", &b);
    sa_of("127.0.0.1", &lo);
    int64_t t = T0;
    for (int i = 0; i < 3; i++)
        assert_true(cy_limit_connect(l, (struct sockaddr *)&a, t));
    assert_false(cy_limit_connect(l, (struct sockaddr *)&a, t));
    assert_true(cy_limit_connect(l, (struct sockaddr *)&b, t)); /* per address */
    assert_false(cy_limit_connect(l, (struct sockaddr *)&a, t + 99));
    assert_true(cy_limit_connect(l, (struct sockaddr *)&a, t + 100));
    assert_false(cy_limit_connect(l, (struct sockaddr *)&a, t + 100));
    /* Refusals are not charged: the rate comes back on time. */
    for (int i = 0; i < 20; i++)
        assert_false(cy_limit_connect(l, (struct sockaddr *)&a, t + 150));
    assert_true(cy_limit_connect(l, (struct sockaddr *)&a, t + 200));
    /* Loopback is exempt by default. */
    for (int i = 0; i < 100; i++)
        assert_true(cy_limit_connect(l, (struct sockaddr *)&lo, t));
    /* 0 turns it off. */
    c.max_connect_rate_per_address = 0;
    for (int i = 0; i < 100; i++)
        assert_true(cy_limit_connect(l, (struct sockaddr *)&a, t + 200));
    cy_limit_free(l);
}

/* ---- eviction ---- */

static void test_table_evicts_least_recent_keeps_lockouts(void **state)
{
    (void)state;
    cy_config c;
    auth_cfg(&c);
    c.auth_fail_window = 3600;
    c.auth_lockout = 3600;
    cy_limit *l;
    assert_int_equal(cy_limit_new(&c, &l), 0);
    int64_t t = T0;
    for (int i = 0; i < 3; i++)
        fail_at(l, "10.9.9.9", NULL, false, t); /* slow, not locked */
    for (int i = 0; i < 5; i++)
        fail_at(l, "10.8.8.8", NULL, false, t); /* locked for an hour */
    /* Twelve times the table's size in other addresses, one failure each,
     * later: the table stays its size; the old slow entry goes, the
     * lockout stays. */
    char ip[32];
    for (int i = 0; i < 12 * CY_LIMIT_SLOTS; i++) {
        snprintf(ip, sizeof(ip), "11.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        fail_at(l, ip, NULL, false, t + 1000 + i / 1000);
    }
    int64_t later = t + 1000 + 12 * CY_LIMIT_SLOTS / 1000 + 1;
    assert_int_equal(check(l, "10.9.9.9", NULL, false, later, NULL), CY_LIMIT_GO);
    assert_int_equal(addr_failures(l, "10.9.9.9", later, NULL), 0);
    assert_int_equal(check(l, "10.8.8.8", NULL, false, later, NULL), CY_LIMIT_LOCKED);
    /* The most recent ones are there. */
    snprintf(ip, sizeof(ip), "11.%d.%d.%d", ((12 * CY_LIMIT_SLOTS - 1) >> 16) & 255,
             ((12 * CY_LIMIT_SLOTS - 1) >> 8) & 255, (12 * CY_LIMIT_SLOTS - 1) & 255);
    assert_int_equal(addr_failures(l, ip, later, NULL), 1);
    cy_limit_free(l);
}

/* ---- the node's file ---- */

static void test_file_shared_by_handles_and_processes(void **state)
{
    (void)state;
    char dir[] = "/tmp/cylimitXXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], junk[128];
    snprintf(path, sizeof(path), "%s/limits", dir);
    snprintf(junk, sizeof(junk), "%s/junk", dir);
    mode_t old = umask(0);
    assert_int_equal(cy_limit_file_create(path), 0);
    umask(old);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    cy_config c;
    auth_cfg(&c);
    c.auth_fail_lockout_after = 0;
    c.auth_fail_burst = 0;
    c.auth_fail_window = 3600;
    cy_limit *a, *b;
    assert_int_equal(cy_limit_open(path, &c, &a), 0);
    assert_int_equal(cy_limit_open(path, &c, &b), 0);
    fail_at(a, "10.0.0.1", NULL, false, T0);
    assert_int_equal(addr_failures(b, "10.0.0.1", T0, NULL), 1);
    /* Two processes counting into one slot at once: every count lands (a
     * compare-and-swap loop per count). */
    enum { N = 20000 };
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        for (int i = 0; i < N; i++)
            fail_at(b, "10.0.0.1", NULL, false, T0);
        _exit(0);
    }
    for (int i = 0; i < N; i++)
        fail_at(a, "10.0.0.1", NULL, false, T0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    uint32_t n = addr_failures(a, "10.0.0.1", T0, NULL);
    assert_true(n >= 2 * N + 1 - 20 && n <= 2 * N + 1);
    cy_limit_free(a);
    cy_limit_free(b);
    /* Not a table: refused. No file: CY_ENOENT. */
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("not a table", f);
    fclose(f);
    assert_int_equal(cy_limit_open(junk, &c, &a), CY_EINVAL);
    assert_null(a);
    unlink(junk);
    unlink(path);
    assert_int_equal(cy_limit_open(path, &c, &a), CY_ENOENT);
    rmdir(dir);
}

int main(void)
{
    T0 = cy_mono_ms() + 1000;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_take_burst_then_rate),
        cmocka_unit_test(test_rate_large_use_passes_then_waits),
        cmocka_unit_test(test_pub_rate_messages_and_bytes),
        cmocka_unit_test(test_exempt_lists),
        cmocka_unit_test(test_auth_address_slow_then_locked),
        cmocka_unit_test(test_auth_window_restarts),
        cmocka_unit_test(test_auth_id_rules),
        cmocka_unit_test(test_auth_exempt_and_ipv6),
        cmocka_unit_test(test_null_handle_limits_nothing),
        cmocka_unit_test(test_connect_rate),
        cmocka_unit_test(test_table_evicts_least_recent_keeps_lockouts),
        cmocka_unit_test(test_file_shared_by_handles_and_processes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
