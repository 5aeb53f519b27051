/* Unit tests of the supervisor's pure parts (src/health/watchdog.c): the
 * verdict on one shard for every state and edge, the crash-loop backoff
 * sequence, the listen address parser and systemd's notify datagrams sent
 * to sockets the test binds (a path and an abstract name). No processes,
 * no clocks: every time is a number given to the function. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/cy_config.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "health/scoreboard.h"
#include "health/supervisor.h"
#include "health/watchdog.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define T0 1000000 /* spawn time, ms */
#define TO 2000    /* watchdog timeout, ms */

static cy_watch_sample running(int64_t beat, uint64_t progress, uint64_t backlog)
{
    cy_watch_sample s = {CY_SHARD_RUNNING, beat, progress, backlog};
    return s;
}

/* A shard that turned RUNNING at T0 and was first sampled then. */
static cy_watch started(void)
{
    cy_watch w;
    cy_watch_init(&w, T0);
    cy_watch_sample s = running(T0, 0, 0);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0, TO, NULL, 0), CY_VERDICT_OK);
    return w;
}

static void test_watchdog_judge_healthy_ok(void **state)
{
    (void)state;
    cy_watch w = started();
    char why[128] = "junk";
    for (int64_t t = T0; t < T0 + 10 * TO; t += 100) {
        cy_watch_sample s = running(t - 50, (uint64_t)(t - T0), 3);
        assert_int_equal(cy_watchdog_judge(&w, &s, t, TO, why, sizeof(why)), CY_VERDICT_OK);
        assert_string_equal(why, "");
    }
}

static void test_watchdog_judge_hung_edges(void **state)
{
    (void)state;
    cy_watch w = started();
    char why[128];
    cy_watch_sample s = running(T0, 0, 0);
    /* exactly at the timeout: still OK */
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + TO, TO, why, sizeof(why)), CY_VERDICT_OK);
    /* one ms later: hung */
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + TO + 1, TO, why, sizeof(why)), CY_VERDICT_HUNG);
    assert_string_equal(why, "no heartbeat for 2.0 s");
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 2100, TO, why, sizeof(why)), CY_VERDICT_HUNG);
    assert_string_equal(why, "no heartbeat for 2.1 s");
    assert_int_equal(cy_watchdog_reason(CY_VERDICT_HUNG), CY_RESTART_HUNG);
    /* A hung shard is hung whatever its progress or backlog. */
    s = running(T0, 999, 0);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 5000, TO, NULL, 0), CY_VERDICT_HUNG);
}

static void test_watchdog_judge_heartbeat_in_future_ok(void **state)
{
    (void)state;
    /* The shard beat after the supervisor read its clock. */
    cy_watch w = started();
    cy_watch_sample s = running(T0 + 30, 0, 0);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 10, TO, NULL, 0), CY_VERDICT_OK);
}

static void test_watchdog_judge_stuck_edges(void **state)
{
    (void)state;
    cy_watch w = started();
    char why[128];
    /* work owed from T0, progress never moves, heartbeat fresh */
    for (int64_t t = T0; t <= T0 + TO; t += 100) {
        cy_watch_sample s = running(t, 0, 530);
        assert_int_equal(cy_watchdog_judge(&w, &s, t, TO, why, sizeof(why)), CY_VERDICT_OK);
    }
    cy_watch_sample s = running(T0 + TO + 1, 0, 530);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + TO + 1, TO, why, sizeof(why)),
                     CY_VERDICT_STUCK);
    assert_string_equal(why, "no progress for 2.0 s with 530 queued");
    s = running(T0 + 2100, 0, 530);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 2100, TO, why, sizeof(why)), CY_VERDICT_STUCK);
    assert_string_equal(why, "no progress for 2.1 s with 530 queued");
    assert_int_equal(cy_watchdog_reason(CY_VERDICT_STUCK), CY_RESTART_STUCK);
}

/* Work owed and no progress, but the heartbeat stopped too (SIGSTOP just
 * after work arrived): not stuck, but hung once the heartbeat is old enough. */
static void test_watchdog_judge_stopped_with_backlog_is_hung_not_stuck(void **state)
{
    (void)state;
    cy_watch w = started();
    char why[128];
    int64_t last_beat = T0 + 500;
    for (int64_t t = T0; t <= last_beat + TO; t += 100) {
        cy_watch_sample s = running(t < last_beat ? t : last_beat, 0, 7);
        assert_int_equal(cy_watchdog_judge(&w, &s, t, TO, why, sizeof(why)), CY_VERDICT_OK);
    }
    cy_watch_sample s = running(last_beat, 0, 7);
    assert_int_equal(cy_watchdog_judge(&w, &s, last_beat + TO + 1, TO, why, sizeof(why)),
                     CY_VERDICT_HUNG);
    assert_string_equal(why, "no heartbeat for 2.0 s");
}

static void test_watchdog_judge_progress_moving_with_backlog_ok(void **state)
{
    (void)state;
    /* A slow shard with a permanent backlog that keeps completing work. */
    cy_watch w = started();
    uint64_t p = 0;
    for (int64_t t = T0; t < T0 + 10 * TO; t += 100) {
        if ((t - T0) % 1500 == 0) p++; /* one unit every 1.5 s < timeout */
        cy_watch_sample s = running(t, p, 10000);
        assert_int_equal(cy_watchdog_judge(&w, &s, t, TO, NULL, 0), CY_VERDICT_OK);
    }
}

static void test_watchdog_judge_idle_no_backlog_ok(void **state)
{
    (void)state;
    /* No work owed, no progress for an hour: idle, not stuck. */
    cy_watch w = started();
    for (int64_t t = T0; t < T0 + 3600000; t += 100000) {
        cy_watch_sample s = running(t, 0, 0);
        assert_int_equal(cy_watchdog_judge(&w, &s, t, TO, NULL, 0), CY_VERDICT_OK);
    }
}

static void test_watchdog_judge_clock_starts_when_work_arrives(void **state)
{
    (void)state;
    /* Idle for a minute, then work arrives: the full timeout from then. */
    cy_watch w = started();
    int64_t t1 = T0 + 60000;
    cy_watch_sample s = running(t1, 0, 0);
    assert_int_equal(cy_watchdog_judge(&w, &s, t1, TO, NULL, 0), CY_VERDICT_OK);
    /* first seen owed at t1 + 100: the clock starts there */
    s = running(t1 + 100, 0, 7);
    assert_int_equal(cy_watchdog_judge(&w, &s, t1 + 100, TO, NULL, 0), CY_VERDICT_OK);
    s = running(t1 + 100 + TO, 0, 7);
    assert_int_equal(cy_watchdog_judge(&w, &s, t1 + 100 + TO, TO, NULL, 0), CY_VERDICT_OK);
    s = running(t1 + 101 + TO, 0, 7);
    assert_int_equal(cy_watchdog_judge(&w, &s, t1 + 101 + TO, TO, NULL, 0), CY_VERDICT_STUCK);
}

static void test_watchdog_judge_backlog_drains_resets(void **state)
{
    (void)state;
    /* Backlog goes to zero without progress (a peer restarted and reset
     * its counters): the stuck clock restarts. */
    cy_watch w = started();
    cy_watch_sample s = running(T0 + 100, 0, 5); /* owed from T0 + 100 */
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 100, TO, NULL, 0), CY_VERDICT_OK);
    s = running(T0 + 2000, 0, 5);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 2000, TO, NULL, 0), CY_VERDICT_OK);
    s = running(T0 + 2050, 0, 0); /* drained, 50 ms before the verdict */
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 2050, TO, NULL, 0), CY_VERDICT_OK);
    s = running(T0 + 2150, 0, 5); /* owed again: a new clock */
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 2150, TO, NULL, 0), CY_VERDICT_OK);
    s = running(T0 + 4150, 0, 5);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 4150, TO, NULL, 0), CY_VERDICT_OK);
    s = running(T0 + 4151, 0, 5);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 4151, TO, NULL, 0), CY_VERDICT_STUCK);
}

static void test_watchdog_judge_idempotent(void **state)
{
    (void)state;
    cy_watch w = started();
    cy_watch_sample s = running(T0 + 1500, 0, 5);
    for (int k = 0; k < 3; k++)
        assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 1500, TO, NULL, 0), CY_VERDICT_OK);
    s = running(T0 + 3500, 0, 5);
    for (int k = 0; k < 3; k++)
        assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 3500, TO, NULL, 0), CY_VERDICT_OK);
    s = running(T0 + 3501, 0, 5);
    for (int k = 0; k < 3; k++)
        assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 3501, TO, NULL, 0), CY_VERDICT_STUCK);
}

static void test_watchdog_judge_starting_grace(void **state)
{
    (void)state;
    cy_watch w;
    cy_watch_init(&w, T0);
    char why[128];
    int64_t limit = cy_watchdog_start_limit(TO);
    assert_int_equal(limit, 10000); /* max(10 s, 5 x 2 s) */
    assert_int_equal(cy_watchdog_start_limit(3000), 15000);
    assert_int_equal(cy_watchdog_start_limit(100), 10000);
    /* No heartbeat judged while STARTING, however old, and no backlog. */
    cy_watch_sample s = {CY_SHARD_STARTING, T0, 0, 500};
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + limit, TO, why, sizeof(why)), CY_VERDICT_OK);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + limit + 1, TO, why, sizeof(why)),
                     CY_VERDICT_START_TIMEOUT);
    assert_string_equal(why, "still starting after 10.0 s");
    assert_int_equal(cy_watchdog_reason(CY_VERDICT_START_TIMEOUT), CY_RESTART_HUNG);

    /* It made it at 9 s: the time spent loading is not counted as
     * "no progress" against its first RUNNING samples. */
    cy_watch_init(&w, T0);
    s.state = CY_SHARD_STARTING;
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 9000, TO, NULL, 0), CY_VERDICT_OK);
    s = running(T0 + 9050, 0, 500);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 9100, TO, NULL, 0), CY_VERDICT_OK);
    s = running(T0 + 11000, 0, 500);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 11000, TO, NULL, 0), CY_VERDICT_OK);
    s = running(T0 + 11100, 0, 500);
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 11101, TO, NULL, 0), CY_VERDICT_STUCK);
}

static void test_watchdog_judge_down_and_stopping_ok(void **state)
{
    (void)state;
    cy_watch w = started();
    cy_watch_sample s = {CY_SHARD_DOWN, 0, 0, 100};
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 100000, TO, NULL, 0), CY_VERDICT_OK);
    s.state = CY_SHARD_STOPPING;
    assert_int_equal(cy_watchdog_judge(&w, &s, T0 + 100000, TO, NULL, 0), CY_VERDICT_OK);
}

/* The owed-work count: an eighth of the timeout, at most 250 ms, at least
 * 10 ms; a verdict then comes at most timeout + timeout/8 after work stops
 * moving (plus the 100 ms sampling). Never less often than min(500 ms, a
 * quarter of the timeout), what issue 11 allows. */
static void test_watchdog_owed_interval(void **state)
{
    (void)state;
    assert_int_equal(cy_watchdog_owed_interval(2000), 250);
    assert_int_equal(cy_watchdog_owed_interval(1000), 125);
    assert_int_equal(cy_watchdog_owed_interval(600000), CY_WATCHDOG_OWED_MAX_MS);
    assert_int_equal(cy_watchdog_owed_interval(100), 12);
    assert_int_equal(cy_watchdog_owed_interval(79), CY_WATCHDOG_OWED_MIN_MS);
    for (int64_t t = 100; t <= 600000; t += 37) {
        int64_t quarter = t / 4 < 500 ? t / 4 : 500;
        assert_true(cy_watchdog_owed_interval(t) <= quarter);
    }
}

static void test_backoff_next_sequence(void **state)
{
    (void)state;
    static const int64_t want[] = {250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000};
    int64_t d = 0;
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        d = cy_backoff_next(d, 100);
        assert_int_equal(d, want[i]);
    }
    /* It ran long enough: at once. */
    assert_int_equal(cy_backoff_next(30000, CY_BACKOFF_SHORT_RUN_MS), 0);
    assert_int_equal(cy_backoff_next(0, 60000), 0);
    /* Just short of 5 s is still a crash loop. */
    assert_int_equal(cy_backoff_next(0, CY_BACKOFF_SHORT_RUN_MS - 1), 250);
    /* Odd previous values are clamped, never overflow. */
    assert_int_equal(cy_backoff_next(100, 0), 250);
    assert_int_equal(cy_backoff_next(INT64_MAX, 0), 30000);
    assert_int_equal(cy_backoff_next(-5, 0), 250);
}

static void test_listen_addr_parse(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    char buf[64];
    assert_int_equal(cy_listen_addr_parse("127.0.0.1:1883", &ss), 0);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    assert_int_equal(a4->sin_family, AF_INET);
    assert_int_equal(ntohs(a4->sin_port), 1883);
    assert_string_equal(inet_ntop(AF_INET, &a4->sin_addr, buf, sizeof(buf)), "127.0.0.1");
    assert_int_equal(cy_listen_addr_parse("0.0.0.0:0", &ss), 0);
    assert_int_equal(cy_listen_addr_parse("*:8883", &ss), 0);
    assert_int_equal(a4->sin_addr.s_addr, htonl(INADDR_ANY));
    assert_int_equal(ntohs(a4->sin_port), 8883);

    assert_int_equal(cy_listen_addr_parse("[::1]:1883", &ss), 0);
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    assert_int_equal(a6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(a6->sin6_port), 1883);
    assert_string_equal(inet_ntop(AF_INET6, &a6->sin6_addr, buf, sizeof(buf)), "::1");
    assert_int_equal(cy_listen_addr_parse("[::]:65535", &ss), 0);
    assert_int_equal(ntohs(a6->sin6_port), 65535);

    static const char *bad[] = {"",
                                "1883",
                                "127.0.0.1",
                                "127.0.0.1:",
                                "127.0.0.1:65536",
                                "127.0.0.1:-1",
                                "127.0.0.1:18a3",
                                "127.0.0.1:123456",
                                "localhost:1883",
                                "::1:1883",
                                "[::1]1883",
                                "[::1]:",
                                "[::1:1883",
                                "[127.0.0.1]:1883",
                                "300.0.0.1:1883",
                                NULL};
    for (int i = 0; bad[i]; i++) {
        if (cy_listen_addr_parse(bad[i], &ss) != CY_EINVAL) fail_msg("accepted '%s'", bad[i]);
    }
    assert_int_equal(cy_listen_addr_parse(NULL, &ss), CY_EINVAL);
}

/* Bind a datagram socket at addr (NOTIFY_SOCKET syntax). */
static int bind_dgram(const char *addr)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t n = strlen(addr);
    memcpy(sa.sun_path, addr, n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    if (addr[0] == '@') {
        sa.sun_path[0] = '\0';
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, len), 0);
    return fd;
}

static void expect_datagram(int fd, const char *want)
{
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_true(n >= 0);
    buf[n] = '\0';
    assert_string_equal(buf, want);
}

static void test_sd_notify_path(void **state)
{
    (void)state;
    char dir[] = "/tmp/cy-notify-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/notify", dir);
    int fd = bind_dgram(path);
    assert_int_equal(setenv("NOTIFY_SOCKET", path, 1), 0);
    assert_int_equal(cy_sd_notify("READY=1"), 0);
    assert_int_equal(cy_sd_notify("WATCHDOG=1"), 0);
    assert_int_equal(cy_sd_notify("STOPPING=1"), 0);
    expect_datagram(fd, "READY=1");
    expect_datagram(fd, "WATCHDOG=1");
    expect_datagram(fd, "STOPPING=1");
    unsetenv("NOTIFY_SOCKET");
    close(fd);
    /* Nobody listening any more: an error, not a crash or a block. */
    assert_true(cy_sd_notify_to(path, "READY=1") < 0);
    unlink(path);
    rmdir(dir);
}

static void test_sd_notify_abstract(void **state)
{
    (void)state;
    char name[64];
    snprintf(name, sizeof(name), "@cy-test-notify-%ld", (long)getpid());
    int fd = bind_dgram(name);
    assert_int_equal(setenv("NOTIFY_SOCKET", name, 1), 0);
    assert_int_equal(cy_sd_notify("READY=1"), 0);
    expect_datagram(fd, "READY=1");
    unsetenv("NOTIFY_SOCKET");
    close(fd);
}

static void test_sd_notify_unset_and_bad(void **state)
{
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(cy_sd_notify("READY=1"), CY_ENOENT);
    assert_int_equal(cy_sd_notify_to("", "READY=1"), CY_ENOENT);
    assert_int_equal(cy_sd_notify_to(NULL, "READY=1"), CY_ENOENT);
    char longname[200];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[0] = '/';
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(cy_sd_notify_to(longname, "READY=1"), CY_EINVAL);
    assert_true(cy_sd_notify_to("/nonexistent-cy/notify", "READY=1") < 0);
}

static void test_watchdog_supervisor_alive(void **state)
{
    (void)state;
    char dir[] = "/tmp/cy-alive-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/scoreboard", dir);
    cy_scoreboard sb;
    assert_int_equal(cy_scoreboard_create(path, 1, &sb), 0);
    assert_false(cy_watchdog_supervisor_alive(&sb, NULL)); /* pid 0 */
    cy_sb_store(&sb.hdr->supervisor_pid, getpid());
    int64_t age;
    assert_true(cy_watchdog_supervisor_alive(&sb, &age));
    /* a pid that cannot exist */
    cy_sb_store(&sb.hdr->supervisor_pid, 0x7ffffff0);
    assert_false(cy_watchdog_supervisor_alive(&sb, NULL));
    cy_scoreboard_close(&sb);
    assert_false(cy_watchdog_supervisor_alive(&sb, &age));
    unlink(path);
    rmdir(dir);
}

/* The drill value: a drill for this generation passes; any other kind,
 * generation or stray value (what kill(1) or a tool would carry) does not. */
static void test_drill_token_kind(void **state)
{
    (void)state;
    for (int64_t gen = 1; gen < 70000; gen += 997) {
        assert_int_equal(cy_drill_kind(cy_drill_token(gen, CY_DRILL_SPIN), gen), CY_DRILL_SPIN);
        assert_int_equal(cy_drill_kind(cy_drill_token(gen, CY_DRILL_STALL), gen), CY_DRILL_STALL);
        assert_int_equal(cy_drill_kind(cy_drill_token(gen, CY_DRILL_DROP), gen), CY_DRILL_DROP);
        assert_int_equal(cy_drill_kind(cy_drill_token(gen, CY_DRILL_SPIN), gen + 1), CY_DRILL_NONE);
        assert_int_equal(cy_drill_kind(cy_drill_token(gen, 7), gen), CY_DRILL_NONE);
        assert_int_equal(cy_drill_kind(cy_drill_token(gen, CY_DRILL_NONE), gen), CY_DRILL_NONE);
    }
    assert_int_equal(cy_drill_kind(0, 0), CY_DRILL_NONE);
    assert_int_equal(cy_drill_kind(1, 0), CY_DRILL_NONE);
    assert_int_equal(cy_drill_kind(-1, 0), CY_DRILL_NONE);
    assert_int_equal(cy_drill_kind(CY_DRILL_SPIN, 0), CY_DRILL_NONE);
}

/* A data_dir whose bus socket path would exceed sun_path is refused before
 * anything starts, at exactly one byte too many; one shard has no bus. */
static void test_supervisor_check_data_dir_length(void **state)
{
    (void)state;
    cy_config c;
    cy_config_defaults(&c);
    size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1; /* 107 */
    c.shards = 4;
    /* "<dir>/run/shard-3.sock": 17 bytes after dir */
    size_t fits = max - strlen("/run/shard-3.sock");
    memset(c.data_dir, 'd', fits);
    c.data_dir[fits] = '\0';
    assert_int_equal(cy_supervisor_check(&c), 0);
    c.data_dir[fits] = 'd';
    c.data_dir[fits + 1] = '\0';
    assert_int_equal(cy_supervisor_check(&c), 1);
    c.shards = 1;
    assert_int_equal(cy_supervisor_check(&c), 0);
    c.shards = 0;
    assert_int_equal(cy_supervisor_check(&c), 1);
    c.shards = CY_SB_MAX_SHARDS + 1;
    assert_int_equal(cy_supervisor_check(&c), 1);
    cy_log_set_level(CY_LOG_INFO);
}

/* Reload reads settings as the command line does: the file, then the
 * overrides on top; an error leaves the config untouched. */
static void test_config_load_args(void **state)
{
    (void)state;
    char path[] = "/tmp/cy-test-conf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "max_topic_length = 99\nlog_level = debug\nshards = 3\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char *args[] = {"-c", path, "--shards=2", "word", NULL};
    cy_config c, was;
    cy_config_defaults(&c);
    cy_config_error err;
    assert_int_equal(cy_config_load_args(&c, args, &err), 0);
    assert_int_equal(c.max_topic_length, 99);
    assert_int_equal(c.shards, 2);
    assert_string_equal(c.log_level, "debug");
    was = c;
    FILE *f = fopen(path, "w");
    fputs("log_level = loud\n", f);
    fclose(f);
    assert_int_equal(cy_config_load_args(&c, args, &err), CY_ECONFIG);
    assert_non_null(strstr(err.msg, "log_level"));
    assert_memory_equal(&c, &was, sizeof(c));
    f = fopen(path, "w");
    fputs("max_topic_length = banana\n", f);
    fclose(f);
    assert_int_equal(cy_config_load_args(&c, args, &err), CY_ECONFIG);
    assert_non_null(strstr(err.msg, ":1: max_topic_length"));
    assert_memory_equal(&c, &was, sizeof(c));
    unlink(path);
    assert_int_not_equal(cy_config_load_args(&c, args, &err), 0); /* file gone */
    assert_memory_equal(&c, &was, sizeof(c));

    /* Which settings reload: limits read per use yes; what sizes or
     * promises something no. */
    size_t n = cy_config_count(), yes = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = cy_config_name(i);
        bool r = cy_config_reloadable(i);
        yes += r;
        if (!strcmp(name, "log_level") || !strcmp(name, "max_topic_length") ||
            !strcmp(name, "cors_origins") || !strcmp(name, "acl_file"))
            assert_true(r);
        if (!strcmp(name, "data_dir") || !strcmp(name, "shards") ||
            !strcmp(name, "topic_alias_max") || !strcmp(name, "event_buffer") ||
            !strcmp(name, "max_inflight") || !strcmp(name, "mqtt_listen") ||
            !strcmp(name, "limits_exempt"))
            assert_false(r);
        if (!strcmp(name, "auth_lockout") || !strcmp(name, "max_publish_rate") ||
            !strcmp(name, "log_summary_interval") || !strcmp(name, "busy_poll_us"))
            assert_true(r);
        if (!strcmp(name, "log_format")) assert_false(r); /* a shipper parses one format */
    }
    assert_int_equal(yes, 40); /* every name in the list is a real setting */
    assert_null(cy_config_name(n));
    assert_false(cy_config_reloadable(n));
}

static void test_canary_failing(void **state)
{
    (void)state;
    char why[64];
    /* Off, or the shard not running: never. */
    assert_false(cy_canary_failing(100000, 0, 1000, 0, 1, 1, why, sizeof(why)));
    assert_false(cy_canary_failing(100000, 3000, 0, 0, 1, 1, why, sizeof(why)));
    assert_string_equal(why, "");
    /* Running since 1000, never succeeded: at the timeout still fine, 1 ms later not. */
    assert_false(cy_canary_failing(4000, 3000, 1000, 0, 1, 1, why, sizeof(why)));
    assert_true(cy_canary_failing(4001, 3000, 1000, 0, 1, 1, why, sizeof(why)));
    assert_string_equal(why, "canary never succeeded in 3.0 s");
    /* A success before the shard's start does not count for this run. */
    assert_true(cy_canary_failing(4001, 3000, 1000, 900, 1, 1, why, sizeof(why)));
    /* A success at 2000 gives until 5000. */
    assert_false(cy_canary_failing(5000, 3000, 1000, 2000, 1, 1, why, sizeof(why)));
    assert_true(cy_canary_failing(5100, 3000, 1000, 2000, 1, 1, why, sizeof(why)));
    assert_string_equal(why, "canary failing for 3.1 s");
    /* Every shard of several failing: the monitor's problem, no verdict. */
    assert_false(cy_canary_failing(5100, 3000, 1000, 2000, 4, 4, why, sizeof(why)));
    assert_true(cy_canary_failing(5100, 3000, 1000, 2000, 4, 3, why, sizeof(why)));
    /* One shard alone: its failure is its own. */
    assert_true(cy_canary_failing(5100, 3000, 1000, 2000, 1, 1, NULL, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canary_failing),
        cmocka_unit_test(test_watchdog_judge_healthy_ok),
        cmocka_unit_test(test_watchdog_judge_hung_edges),
        cmocka_unit_test(test_watchdog_judge_heartbeat_in_future_ok),
        cmocka_unit_test(test_watchdog_judge_stuck_edges),
        cmocka_unit_test(test_watchdog_judge_stopped_with_backlog_is_hung_not_stuck),
        cmocka_unit_test(test_watchdog_judge_progress_moving_with_backlog_ok),
        cmocka_unit_test(test_watchdog_judge_idle_no_backlog_ok),
        cmocka_unit_test(test_watchdog_judge_clock_starts_when_work_arrives),
        cmocka_unit_test(test_watchdog_judge_backlog_drains_resets),
        cmocka_unit_test(test_watchdog_judge_idempotent),
        cmocka_unit_test(test_watchdog_judge_starting_grace),
        cmocka_unit_test(test_watchdog_judge_down_and_stopping_ok),
        cmocka_unit_test(test_watchdog_owed_interval),
        cmocka_unit_test(test_backoff_next_sequence),
        cmocka_unit_test(test_listen_addr_parse),
        cmocka_unit_test(test_sd_notify_path),
        cmocka_unit_test(test_sd_notify_abstract),
        cmocka_unit_test(test_sd_notify_unset_and_bad),
        cmocka_unit_test(test_watchdog_supervisor_alive),
        cmocka_unit_test(test_drill_token_kind),
        cmocka_unit_test(test_supervisor_check_data_dir_length),
        cmocka_unit_test(test_config_load_args),
    };
    return cmocka_run_group_tests_name("supervisor", tests, NULL, NULL);
}
