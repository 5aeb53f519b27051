/* test_supervisor_notify: systemd's notification protocol as the
 * supervisor speaks it (health/sdnotify.h) and the supervisor's judgement
 * of its own health, which decides whether systemd's watchdog is fed.
 *
 * The notifier is driven against a datagram socket of the test's own (a
 * path and an abstract name), with the environment values systemd would
 * set: WATCHDOG_USEC turns the watchdog on, WATCHDOG_PID gives it to
 * another process or to us, and cy_sdnotify_open clears all three so that
 * no child inherits them. The health rules are pure: each is shown to
 * flip at its edge, and a crash-looping shard is shown to be healthy
 * supervision (it must not cost the whole node a restart).
 */
#include "core/cy_err.h"
#include "health/sdnotify.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

static int bind_dgram(const char *name)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t n = strlen(name);
    memcpy(sa.sun_path, name, n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    if (name[0] == '@') {
        sa.sun_path[0] = '\0';
        len--;
    }
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, len), 0);
    return fd;
}

static void expect_datagram(int fd, const char *want)
{
    char buf[512];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_true(n >= 0);
    buf[n] = '\0';
    assert_string_equal(buf, want);
}

static void expect_nothing(int fd)
{
    char buf[16];
    assert_true(recv(fd, buf, sizeof(buf), MSG_DONTWAIT) < 0);
}

static void test_open_path_and_watchdog(void **state)
{
    (void)state;
    char dir[] = "/tmp/cy-sdn-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/notify", dir);
    int fd = bind_dgram(path);
    cy_sdnotify n;
    /* WatchdogSec=10 for us: ping every 5 s. */
    assert_int_equal(cy_sdnotify_open_from(&n, path, "10000000", "4242", 4242), 0);
    assert_int_equal(n.watchdog_ms, 10000);
    assert_int_equal(cy_sdnotify_ping_ms(&n), 5000);
    assert_int_equal(cy_sdnotify_send(&n, "READY=1\nSTATUS=ready"), 0);
    assert_int_equal(cy_sdnotify_send(&n, "WATCHDOG=1"), 0);
    expect_datagram(fd, "READY=1\nSTATUS=ready");
    expect_datagram(fd, "WATCHDOG=1");
    cy_sdnotify_close(&n);
    assert_int_equal(n.fd, -1);
    assert_int_equal(cy_sdnotify_send(&n, "WATCHDOG=1"), CY_ENOENT);
    expect_nothing(fd);

    /* The watchdog is another process's: no pings from us. */
    assert_int_equal(cy_sdnotify_open_from(&n, path, "10000000", "1", 4242), 0);
    assert_int_equal(cy_sdnotify_ping_ms(&n), 0);
    assert_int_equal(cy_sdnotify_send(&n, "READY=1"), 0); /* the rest is still ours */
    expect_datagram(fd, "READY=1");
    cy_sdnotify_close(&n);
    /* No WATCHDOG_PID: the receiver's. Bad or zero intervals: off. */
    assert_int_equal(cy_sdnotify_open_from(&n, path, "3000", NULL, 7), 0);
    assert_int_equal(n.watchdog_ms, 3);
    assert_int_equal(cy_sdnotify_ping_ms(&n), 2);
    cy_sdnotify_close(&n);
    assert_int_equal(cy_sdnotify_open_from(&n, path, "500", "", 7), 0);
    assert_int_equal(n.watchdog_ms, 1); /* under a millisecond: at least 1 */
    assert_false(n.bad_watchdog);
    cy_sdnotify_close(&n);
    const char *bad[] = {"0", "", "-5", "12x", "x", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(cy_sdnotify_open_from(&n, path, bad[i], NULL, 7), 0);
        assert_int_equal(cy_sdnotify_ping_ms(&n), 0);
        assert_true(n.bad_watchdog); /* said in the log */
        cy_sdnotify_close(&n);
    }
    assert_int_equal(cy_sdnotify_open_from(&n, path, "1000000", "4242x", 4242), 0);
    assert_int_equal(cy_sdnotify_ping_ms(&n), 0); /* a malformed pid is not ours */
    cy_sdnotify_close(&n);
    close(fd);
    /* Nobody listening: an error, never a block or a crash. */
    assert_int_equal(cy_sdnotify_open_from(&n, path, NULL, NULL, 7), 0);
    assert_true(cy_sdnotify_send(&n, "READY=1") < 0);
    cy_sdnotify_close(&n);
    unlink(path);
    rmdir(dir);
}

static void test_open_abstract_and_bad(void **state)
{
    (void)state;
    char name[64];
    snprintf(name, sizeof(name), "@cy-test-sdn-%ld", (long)getpid());
    int fd = bind_dgram(name);
    cy_sdnotify n;
    assert_int_equal(cy_sdnotify_open_from(&n, name, NULL, NULL, 1), 0);
    assert_int_equal(cy_sdnotify_ping_ms(&n), 0);
    assert_int_equal(cy_sdnotify_send(&n, "STOPPING=1"), 0);
    expect_datagram(fd, "STOPPING=1");
    cy_sdnotify_close(&n);
    close(fd);

    assert_int_equal(cy_sdnotify_open_from(&n, NULL, "1000000", NULL, 1), CY_ENOENT);
    assert_int_equal(n.fd, -1);
    assert_int_equal(cy_sdnotify_ping_ms(&n), 0); /* no socket, no pings */
    assert_int_equal(cy_sdnotify_send(&n, "READY=1"), CY_ENOENT);
    assert_int_equal(cy_sdnotify_open_from(&n, "", NULL, NULL, 1), CY_ENOENT);
    char longname[200];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[0] = '/';
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(cy_sdnotify_open_from(&n, longname, NULL, NULL, 1), CY_EINVAL);
    assert_int_equal(n.fd, -1);
    cy_sdnotify_close(&n); /* safe on one never opened */
}

static void test_open_clears_environment(void **state)
{
    (void)state;
    char name[64];
    snprintf(name, sizeof(name), "@cy-test-sdn-env-%ld", (long)getpid());
    int fd = bind_dgram(name);
    char pid[32];
    snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    setenv("NOTIFY_SOCKET", name, 1);
    setenv("WATCHDOG_USEC", "2000000", 1);
    setenv("WATCHDOG_PID", pid, 1);
    cy_sdnotify n;
    assert_int_equal(cy_sdnotify_open(&n), 0);
    assert_int_equal(cy_sdnotify_ping_ms(&n), 1000);
    assert_string_equal(n.socket, name);
    /* Children (shards, the monitor) must not see any of them. */
    assert_null(getenv("NOTIFY_SOCKET"));
    assert_null(getenv("WATCHDOG_USEC"));
    assert_null(getenv("WATCHDOG_PID"));
    assert_int_equal(cy_sdnotify_send(&n, "WATCHDOG=1"), 0);
    expect_datagram(fd, "WATCHDOG=1");
    cy_sdnotify_close(&n);
    close(fd);
    /* Not under systemd: off, and nothing to clear. */
    assert_int_equal(cy_sdnotify_open(&n), CY_ENOENT);
}

static cy_sv_proc up(const char *name)
{
    cy_sv_proc p;
    memset(&p, 0, sizeof(p));
    p.name = name;
    p.pid = 100;
    p.alive = true;
    return p;
}

static void test_health(void **state)
{
    (void)state;
    char why[256];
    cy_sv_proc p[3] = {up("shard 0"), up("shard 1"), up("monitor")};
    int64_t now = 1000000;
    assert_true(cy_supervisor_healthy(p, 3, true, now, why, sizeof(why)));
    assert_string_equal(why, "");
    assert_true(cy_supervisor_healthy(p, 3, true, now, NULL, 0));

    /* The scoreboard removed or replaced: no new shard could start. */
    assert_false(cy_supervisor_healthy(p, 3, false, now, why, sizeof(why)));
    assert_non_null(strstr(why, "scoreboard"));

    /* A crash loop is supervision at work: down with a respawn scheduled
     * is healthy however long it lasts, so one shard's fault never has
     * systemd restart the node. */
    p[1].alive = false;
    p[1].respawn_armed = true;
    assert_true(cy_supervisor_healthy(p, 3, true, now, why, sizeof(why)));
    /* Down with nothing scheduled: nobody will bring it back. */
    p[1].respawn_armed = false;
    assert_false(cy_supervisor_healthy(p, 3, true, now, why, sizeof(why)));
    assert_string_equal(why, "shard 1 is down and no respawn is scheduled");
    p[1].respawn_armed = true;

    /* Spawns that fail (fds exhausted, the binary gone): allowed for
     * CY_SV_SPAWN_FAIL_MS, not a millisecond more. */
    p[1].spawn_failing_since_ms = now - CY_SV_SPAWN_FAIL_MS;
    assert_true(cy_supervisor_healthy(p, 3, true, now, why, sizeof(why)));
    p[1].spawn_failing_since_ms = now - CY_SV_SPAWN_FAIL_MS - 1;
    assert_false(cy_supervisor_healthy(p, 3, true, now, why, sizeof(why)));
    assert_non_null(strstr(why, "shard 1 could not be spawned for 60 s"));
    p[1] = up("shard 1");

    /* A SIGKILLed child must be reaped within CY_SV_REAP_MS. */
    p[2].killed_ms = now - CY_SV_REAP_MS;
    assert_true(cy_supervisor_healthy(p, 3, true, now, why, sizeof(why)));
    p[2].killed_ms = now - CY_SV_REAP_MS - 1;
    p[2].pid = 4246;
    assert_false(cy_supervisor_healthy(p, 3, true, now, why, sizeof(why)));
    assert_string_equal(why, "monitor (pid 4246) was killed 5.0 s ago and has not exited");
    /* Once reaped (not alive), the old kill time does not matter. */
    p[2].alive = false;
    p[2].respawn_armed = true;
    assert_true(cy_supervisor_healthy(p, 3, true, now, why, sizeof(why)));

    /* No processes at all (nothing to supervise yet): healthy. */
    assert_true(cy_supervisor_healthy(NULL, 0, true, now, why, sizeof(why)));
    /* A short why buffer is cut, never overrun. */
    char tiny[8];
    assert_false(cy_supervisor_healthy(p, 3, false, now, tiny, sizeof(tiny)));
    assert_int_equal(strlen(tiny), 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_path_and_watchdog),
        cmocka_unit_test(test_open_abstract_and_bad),
        cmocka_unit_test(test_open_clears_environment),
        cmocka_unit_test(test_health),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
