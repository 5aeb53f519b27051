/* End-to-end tests of cy_supervisor_run, cy_status_print and cy_shard_drill
 * with real processes.
 *
 * This binary is also its own fake shard: the supervisor spawns
 * `exe shard <index> <generation> --data_dir=DIR --fake=MODE[:INDEX]`, and
 * main() sends argv[1] == "shard" to fake_shard_main instead of cmocka. The
 * fake maps the scoreboard and behaves like a shard (STARTING, RUNNING, a
 * heartbeat every 20 ms, accept on fd 3, exit on EOF of fd 4 and on SIGTERM)
 * or misbehaves as MODE says, in its first generation, for shard INDEX:
 *   ok       behave;
 *   crash    exit(1) at once, every generation (a crash loop);
 *   hang     stop beating after 200 ms (hung);
 *   stuck    beat, but report 5 queued and never progress (stuck);
 *   badstop  exit 3 on SIGTERM (an unclean stop).
 * It also records what it inherited in its slot's counters, for the test to
 * check: fd 3 a listening socket (and its port), fd 4 a unix socket, fd 0
 * /dev/null, NOTIFY_SOCKET not inherited.
 *
 * cy_supervisor_run handles SIGTERM itself, so each test runs it in a forked
 * child (stderr into a log file, printed when the test fails) and signals
 * that child. The test process is a child subreaper, so shards orphaned by a
 * killed supervisor come back to it and are reaped. Every wait is bounded;
 * every address is 127.0.0.1.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/cy_clock.h"
#include "core/cy_config.h"
#include "core/cy_err.h"
#include "health/scoreboard.h"
#include "health/supervisor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_MS 300 /* watchdog_timeout in these tests */

/* Slot counters the fake shard fills. */
enum {
    K_LISTENING = 0, /* fd 3 is a listening TCP socket */
    K_UNIX = 1,      /* fd 4 is a unix stream socket */
    K_PORT = 2,      /* fd 3's port */
    K_DEVNULL = 3,   /* fd 0 is /dev/null */
    K_MARK_MS = 4,   /* hang: last heartbeat; stuck: when it reported work */
    K_NOTIFY = 5,    /* NOTIFY_SOCKET or WATCHDOG_* was in its environment */
};

/* ---------------- the fake shard ---------------- */

static volatile sig_atomic_t got_term;

static void on_term(int sig)
{
    (void)sig;
    got_term = 1;
}

/* Every exit is _exit: a sanitizer's leak check at exit (a ptrace tracer)
 * can wedge a process that is being signalled, and a fake shard has no
 * leaks worth the risk. */
static int fake_shard_main(int argc, char **argv)
{
    if (argc < 4) _exit(64);
    unsigned idx = (unsigned)atoi(argv[2]);
    long gen = atol(argv[3]);
    const char *data_dir = NULL, *mode = "ok";
    for (int i = 4; i < argc; i++) {
        if (!strncmp(argv[i], "--data_dir=", 11)) data_dir = argv[i] + 11;
        if (!strncmp(argv[i], "--fake=", 7)) mode = argv[i] + 7;
    }
    char name[16] = "ok";
    int target = -1;
    sscanf(mode, "%15[a-z]:%d", name, &target);
    bool mine = target < 0 || (unsigned)target == idx;
    if (mine && !strcmp(name, "crash")) _exit(1);
    bool bad = mine && gen == 1;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);

    char path[600];
    snprintf(path, sizeof(path), "%s/run/scoreboard", data_dir ? data_dir : ".");
    cy_scoreboard sb;
    if (cy_scoreboard_open(path, &sb) || idx >= sb.hdr->nshards) _exit(65);
    cy_sb_slot *me = &sb.slots[idx];
    cy_sb_store(&me->pid, getpid());
    cy_sb_store(&me->generation, gen);
    cy_sb_store(&me->heartbeat_ms, cy_mono_ms());

    int v = 0;
    socklen_t l = sizeof(v);
    cy_sb_storeu(&me->counters[K_LISTENING],
                 getsockopt(3, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) == 0 && v == 1);
    struct sockaddr_storage ss;
    l = sizeof(ss);
    if (getsockname(3, (struct sockaddr *)&ss, &l) == 0 && ss.ss_family == AF_INET)
        cy_sb_storeu(&me->counters[K_PORT], ntohs(((struct sockaddr_in *)&ss)->sin_port));
    l = sizeof(ss);
    v = 0;
    socklen_t lv = sizeof(v);
    cy_sb_storeu(&me->counters[K_UNIX],
                 getsockname(4, (struct sockaddr *)&ss, &l) == 0 && ss.ss_family == AF_UNIX &&
                     getsockopt(4, SOL_SOCKET, SO_TYPE, &v, &lv) == 0 && v == SOCK_STREAM);
    struct stat a, b;
    cy_sb_storeu(&me->counters[K_DEVNULL], fstat(0, &a) == 0 && stat("/dev/null", &b) == 0 &&
                                               a.st_rdev == b.st_rdev && S_ISCHR(a.st_mode));
    cy_sb_storeu(&me->counters[K_NOTIFY],
                 getenv("NOTIFY_SOCKET") || getenv("WATCHDOG_USEC") || getenv("WATCHDOG_PID"));

    int64_t now = cy_mono_ms();
    cy_sb_store(&me->started_ms, now);
    cy_sb_store(&me->state, CY_SHARD_RUNNING);
    cy_sb_store(&me->accepting, 1); /* as a shard taking clients: READY=1 waits for it */
    int64_t running_at = now;
    bool beating = true;
    for (;;) {
        struct pollfd p[2] = {{3, POLLIN, 0}, {4, POLLIN, 0}};
        int n = poll(p, 2, 20);
        now = cy_mono_ms();
        if (got_term) {
            cy_sb_store(&me->state, CY_SHARD_STOPPING);
            _exit(mine && !strcmp(name, "badstop") ? 3 : 0);
        }
        if (n > 0 && (p[1].revents & (POLLIN | POLLHUP))) {
            char c;
            if (read(4, &c, 1) <= 0) _exit(0); /* the supervisor is gone */
        }
        if (n > 0 && (p[0].revents & POLLIN)) {
            int fd = accept(3, NULL, NULL);
            if (fd >= 0) {
                ssize_t w = write(fd, "ok\n", 3);
                (void)w;
                close(fd);
                cy_sb_storeu(&me->progress, cy_sb_loadu(&me->progress) + 1);
            }
        }
        if (bad && !strcmp(name, "hang") && beating && now - running_at >= 200) {
            beating = false;
            cy_sb_storeu(&me->counters[K_MARK_MS], (uint64_t)cy_sb_load(&me->heartbeat_ms));
        }
        if (bad && !strcmp(name, "stuck") && !cy_sb_loadu(&me->queued) && now - running_at >= 100) {
            cy_sb_storeu(&me->counters[K_MARK_MS], (uint64_t)now);
            cy_sb_storeu(&me->queued, 5);
        }
        if (beating) {
            cy_sb_store(&me->heartbeat_ms, now);
            cy_sb_storeu(&me->loops, cy_sb_loadu(&me->loops) + 1);
        }
    }
}

/* ---------------- harness ---------------- */

typedef struct run {
    char dir[64];
    char log[128];
    char exe[PATH_MAX];
    cy_config cfg;
    pid_t sv;
    pid_t orphan; /* a shard of an earlier supervisor that the test watches */
    cy_scoreboard sb;
    bool passed;
} run;

static run R;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Poll cond (evaluated once per try: it may have effects) for up to ms. */
#define WAIT_FOR(cond, ms)                                                                         \
    do {                                                                                           \
        int64_t until_ = cy_mono_ms() + (ms);                                                      \
        bool ok_;                                                                                  \
        while (!(ok_ = (cond)) && cy_mono_ms() < until_)                                           \
            sleep_ms(5);                                                                           \
        if (!ok_) fail_msg("timed out after %d ms waiting for %s", (int)(ms), #cond);              \
    } while (0)

static int setup(void **state)
{
    (void)state;
    memset(&R, 0, sizeof(R));
    snprintf(R.dir, sizeof(R.dir), "/tmp/cy-sv-XXXXXX");
    if (!mkdtemp(R.dir)) return -1;
    snprintf(R.log, sizeof(R.log), "%s.log", R.dir);
    if (!realpath("/proc/self/exe", R.exe)) return -1;
    cy_config_defaults(&R.cfg);
    snprintf(R.cfg.data_dir, sizeof(R.cfg.data_dir), "%s", R.dir);
    snprintf(R.cfg.mqtt_listen, sizeof(R.cfg.mqtt_listen), "127.0.0.1:0");
    snprintf(R.cfg.http_listen, sizeof(R.cfg.http_listen), "127.0.0.1:0");
    R.cfg.watchdog_timeout = TIMEOUT_MS;
    R.cfg.shards = 2;
    R.cfg.monitor = false; /* this file fakes shards only; the monitor has its own tests */
    return 0;
}

static void print_log(void)
{
    FILE *f = fopen(R.log, "r");
    if (!f) return;
    fprintf(stderr, "---- supervisor log (%s) ----\n", R.log);
    char line[1200];
    while (fgets(line, sizeof(line), f))
        fputs(line, stderr);
    fprintf(stderr, "---- end of log ----\n");
    fclose(f);
}

static int teardown(void **state)
{
    (void)state;
    if (!R.passed) print_log();
    if (R.sv > 0) {
        kill(R.sv, SIGKILL);
        waitpid(R.sv, NULL, 0);
    }
    /* Its shards are ours now (subreaper) and unreaped, so their pids
     * cannot have been reused: kill what is left. */
    for (unsigned i = 0; R.sb.hdr && i < R.sb.hdr->nshards; i++) {
        pid_t p = (pid_t)cy_sb_load(&R.sb.slots[i].pid);
        if (p > 0 && waitpid(p, NULL, WNOHANG) == 0) {
            kill(p, SIGKILL);
            waitpid(p, NULL, 0);
        }
    }
    if (R.orphan > 0 && waitpid(R.orphan, NULL, WNOHANG) == 0) {
        kill(R.orphan, SIGKILL);
        waitpid(R.orphan, NULL, 0);
    }
    cy_scoreboard_close(&R.sb);
    /* Reap shards orphaned to us (we are their subreaper), bounded. */
    int64_t until = cy_mono_ms() + 3000;
    for (;;) {
        pid_t p = waitpid(-1, NULL, WNOHANG);
        if (p < 0 && errno == ECHILD) break;
        if (cy_mono_ms() > until) break;
        if (p == 0) sleep_ms(5);
    }
    char p[200];
    snprintf(p, sizeof(p), "%s/run/scoreboard", R.dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/run/lock", R.dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/run", R.dir);
    rmdir(p);
    rmdir(R.dir);
    unlink(R.log);
    return 0;
}

/* Fork a supervisor with --fake=mode. */
static void start_nowait(const char *mode)
{
    char a1[600], a2[64];
    snprintf(a1, sizeof(a1), "--data_dir=%s", R.dir);
    snprintf(a2, sizeof(a2), "--fake=%s", mode);
    char *pass[] = {a1, a2, NULL};
    fflush(NULL);
    R.sv = fork();
    assert_true(R.sv >= 0);
    if (R.sv == 0) {
        int fd = open(R.log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            close(fd);
        }
        int rc = cy_supervisor_run(&R.cfg, R.exe, pass);
        exit(rc);
    }
}

/* Another supervisor with --fake=ok on the same data_dir, in a forked child
 * logging to the same file; its exit status (bounded). */
static int run_second(void)
{
    char a1[600];
    snprintf(a1, sizeof(a1), "--data_dir=%s", R.dir);
    char *pass[] = {a1, NULL};
    fflush(NULL);
    pid_t p = fork();
    assert_true(p >= 0);
    if (p == 0) {
        int fd = open(R.log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            close(fd);
        }
        cy_config cfg = R.cfg;
        snprintf(cfg.mqtt_listen, sizeof(cfg.mqtt_listen), "127.0.0.1:0");
        exit(cy_supervisor_run(&cfg, R.exe, pass));
    }
    int st = 0;
    int64_t until = cy_mono_ms() + 5000;
    while (waitpid(p, &st, WNOHANG) != p) {
        if (cy_mono_ms() > until) {
            kill(p, SIGKILL);
            waitpid(p, &st, 0);
            fail_msg("the second supervisor did not exit within 5 s");
        }
        sleep_ms(5);
    }
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

/* The same, and wait for its scoreboard. */
static void start(const char *mode)
{
    start_nowait(mode);
    char path[600];
    snprintf(path, sizeof(path), "%s/run/scoreboard", R.dir);
    WAIT_FOR(cy_scoreboard_open(path, &R.sb) == 0 &&
                 (cy_sb_load(&R.sb.hdr->supervisor_pid) == R.sv || (cy_scoreboard_close(&R.sb), 0)),
             3000);
}

static int64_t slot_state(unsigned i)
{
    return cy_sb_load(&R.sb.slots[i].state);
}

static int64_t slot_gen(unsigned i)
{
    return cy_sb_load(&R.sb.slots[i].generation);
}

static int64_t restarts(unsigned i, int reason)
{
    return cy_sb_load(&R.sb.slots[i].sv_restarts[reason]);
}

/* Running in that generation, as the shard and its supervisor both say: a
 * shard may write its state before the supervisor, back from the spawn,
 * writes the pid it spawned (sv_pid, what the drills signal). */
static bool running_gen(unsigned i, int64_t gen)
{
    return slot_state(i) == CY_SHARD_RUNNING && slot_gen(i) == gen &&
           cy_sb_load(&R.sb.slots[i].sv_pid) != 0;
}

/* SIGTERM the supervisor; its exit status (bounded). */
static int stop(void)
{
    assert_int_equal(kill(R.sv, SIGTERM), 0);
    int st = 0;
    pid_t p = 0;
    WAIT_FOR((p = waitpid(R.sv, &st, WNOHANG)) == R.sv, 5000);
    R.sv = 0;
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static bool log_has(const char *needle)
{
    FILE *f = fopen(R.log, "r");
    if (!f) return false;
    char line[1200];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

/* Run f with stdout captured into buf. */
static int capture(int (*f)(const cy_config *, const char *, const char *), const char *a,
                   const char *b, char *buf, size_t len)
{
    char path[160];
    snprintf(path, sizeof(path), "%s.out", R.dir);
    fflush(stdout);
    int saved = dup(1);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0 && saved >= 0);
    dup2(fd, 1);
    close(fd);
    int rc = f(&R.cfg, a, b);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    FILE *in = fopen(path, "r");
    size_t n = in ? fread(buf, 1, len - 1, in) : 0;
    buf[n] = '\0';
    if (in) fclose(in);
    unlink(path);
    return rc;
}

static int status_adapter(const cy_config *cfg, const char *a, const char *b)
{
    (void)a;
    (void)b;
    return cy_status_print(cfg);
}

static int bind_abstract(const char *name)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t n = strlen(name);
    memcpy(sa.sun_path + 1, name + 1, n - 1);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(
        bind(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)),
        0);
    return fd;
}

/* ---------------- tests ---------------- */

static void test_supervisor_run_spawns_serves_and_stops_cleanly(void **state)
{
    (void)state;
    char nname[64];
    snprintf(nname, sizeof(nname), "@cy-test-sv-%ld", (long)getpid());
    int nfd = bind_abstract(nname);
    setenv("NOTIFY_SOCKET", nname, 1);
    setenv("WATCHDOG_USEC", "1000000", 1); /* a ping every 0.5 s */
    start("ok");
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");

    WAIT_FOR(running_gen(0, 1) && running_gen(1, 1), 3000);
    for (unsigned i = 0; i < 2; i++) {
        cy_sb_slot *s = &R.sb.slots[i];
        assert_int_equal(cy_sb_load(&s->sv_pid), cy_sb_load(&s->pid));
        assert_int_equal(cy_sb_loadu(&s->counters[K_LISTENING]), 1);
        assert_int_equal(cy_sb_loadu(&s->counters[K_UNIX]), 1);
        assert_int_equal(cy_sb_loadu(&s->counters[K_DEVNULL]), 1);
        assert_int_equal(cy_sb_loadu(&s->counters[K_NOTIFY]), 0);
        for (int r = 0; r < CY_RESTART_NREASONS; r++)
            assert_int_equal(restarts(i, r), 0);
    }
    assert_int_equal(R.sb.hdr->watchdog_timeout_ms, TIMEOUT_MS);
    assert_true(cy_mono_ms() - cy_sb_load(&R.sb.hdr->supervisor_heartbeat_ms) < 1000);

    /* Both shards accept on the one socket the supervisor made. */
    uint64_t port = cy_sb_loadu(&R.sb.slots[0].counters[K_PORT]);
    assert_true(port > 0);
    assert_int_equal(cy_sb_loadu(&R.sb.slots[1].counters[K_PORT]), port);
    for (int k = 0; k < 4; k++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin = {0};
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t)port);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(c, (struct sockaddr *)&sin, sizeof(sin)), 0);
        char buf[8] = {0};
        struct timeval tv = {3, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        assert_int_equal(recv(c, buf, sizeof(buf), MSG_WAITALL), 3);
        assert_string_equal(buf, "ok\n");
        close(c);
    }
    WAIT_FOR(cy_sb_loadu(&R.sb.slots[0].progress) + cy_sb_loadu(&R.sb.slots[1].progress) == 4,
             1000);

    char out[8192];
    assert_int_equal(capture(status_adapter, NULL, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "supervisor pid"));
    assert_non_null(strstr(out, "RUNNING"));
    assert_non_null(strstr(out, "0/0/0/0"));

    sleep_ms(1100); /* one more WATCHDOG=1 */
    assert_int_equal(stop(), 0);
    assert_int_equal(cy_sb_load(&R.sb.hdr->supervisor_pid), 0);
    assert_int_equal(slot_state(0), CY_SHARD_DOWN);
    assert_int_equal(slot_state(1), CY_SHARD_DOWN);
    assert_int_equal(cy_sb_load(&R.sb.slots[0].sv_pid), 0);
    /* No live supervisor: status says so with exit status 1. */
    assert_int_equal(capture(status_adapter, NULL, NULL, out, sizeof(out)), 1);

    /* systemd saw READY once (with a STATUS), pings every half second,
     * and STOPPING last. A message is lines of NAME=value. */
    int ready = 0, watchdog = 0, stopping = 0, status = 0;
    char last[512] = "";
    for (;;) {
        char buf[512];
        ssize_t n = recv(nfd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
        if (n < 0) break;
        buf[n] = '\0';
        snprintf(last, sizeof(last), "%s", buf);
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
            ready += !strcmp(line, "READY=1");
            watchdog += !strcmp(line, "WATCHDOG=1");
            stopping += !strcmp(line, "STOPPING=1");
            status += !strcmp(line, "STATUS=2 of 2 shards serving");
        }
    }
    close(nfd);
    assert_int_equal(ready, 1);
    assert_true(watchdog >= 3);
    assert_int_equal(stopping, 1);
    assert_true(status >= 1);
    assert_string_equal(last, "STOPPING=1\nSTATUS=stopping: SIGTERM");
    assert_true(log_has("supervisor: ready in"));
    assert_true(log_has("all 2 shards running"));
    R.passed = true;
}

static void test_supervisor_run_crash_loop_backs_off(void **state)
{
    (void)state;
    R.cfg.shards = 1;
    start("crash");
    static const int64_t want[] = {250, 500, 1000, 2000};
    int64_t seen_at[4] = {0};
    size_t k = 0;
    int64_t until = cy_mono_ms() + 6000;
    while (k < 4 && cy_mono_ms() < until) {
        int64_t b = cy_sb_load(&R.sb.slots[0].sv_backoff_ms);
        if (b == want[k])
            seen_at[k++] = cy_mono_ms();
        else if (k > 0 && b != want[k - 1])
            fail_msg("backoff %lld after %lld", (long long)b, (long long)want[k - 1]);
        sleep_ms(2);
    }
    assert_int_equal(k, 4);
    /* Each wait really happened: never a tight loop. */
    for (size_t i = 1; i < 4; i++)
        assert_true(seen_at[i] - seen_at[i - 1] >= want[i - 1] - 20);
    assert_int_equal(slot_gen(0), 4);
    assert_int_equal(restarts(0, CY_RESTART_EXIT), 4);
    assert_int_equal(restarts(0, CY_RESTART_SIGNAL), 0);
    assert_string_equal(R.sb.slots[0].sv_last_reason, "exited with status 1");
    assert_true(log_has("exited with status 1 after"));
    assert_true(log_has("respawning in 2 s (crash loop)"));
    /* It is down (waiting) when stopped: not a clean stop. */
    assert_int_equal(stop(), 1);
    R.passed = true;
}

static void test_supervisor_run_hung_shard_killed(void **state)
{
    (void)state;
    start("hang:0");
    WAIT_FOR(cy_sb_loadu(&R.sb.slots[0].counters[K_MARK_MS]) != 0, 3000);
    int64_t last_beat = (int64_t)cy_sb_loadu(&R.sb.slots[0].counters[K_MARK_MS]);
    WAIT_FOR(restarts(0, CY_RESTART_HUNG) == 1, 3000);
    int64_t detected = cy_sb_load(&R.sb.slots[0].sv_last_restart_ms);
    int64_t took = detected - last_beat;
    if (took <= TIMEOUT_MS || took > TIMEOUT_MS + 500)
        fail_msg("hung shard detected after %lld ms (timeout %d)", (long long)took, TIMEOUT_MS);
    assert_non_null(strstr(R.sb.slots[0].sv_last_reason, "no heartbeat for 0."));
    WAIT_FOR(running_gen(0, 2), 3000);
    /* The healthy peer was never touched. */
    for (int r = 0; r < CY_RESTART_NREASONS; r++)
        assert_int_equal(restarts(1, r), 0);
    assert_int_equal(slot_gen(1), 1);
    assert_int_equal(restarts(0, CY_RESTART_SIGNAL), 0); /* our SIGKILL is not "signal 9" */
    assert_true(log_has("shard 0 (pid "));
    assert_true(log_has(": killed, respawning"));
    assert_int_equal(stop(), 0);
    R.passed = true;
}

static void test_supervisor_run_stuck_shard_killed(void **state)
{
    (void)state;
    start("stuck:1");
    WAIT_FOR(cy_sb_loadu(&R.sb.slots[1].counters[K_MARK_MS]) != 0, 3000);
    int64_t work_at = (int64_t)cy_sb_loadu(&R.sb.slots[1].counters[K_MARK_MS]);
    WAIT_FOR(restarts(1, CY_RESTART_STUCK) == 1, 3000);
    int64_t took = cy_sb_load(&R.sb.slots[1].sv_last_restart_ms) - work_at;
    if (took <= TIMEOUT_MS || took > TIMEOUT_MS + 500)
        fail_msg("stuck shard detected after %lld ms (timeout %d)", (long long)took, TIMEOUT_MS);
    assert_int_equal(restarts(1, CY_RESTART_HUNG), 0);
    assert_non_null(strstr(R.sb.slots[1].sv_last_reason, "with 5 queued"));
    WAIT_FOR(running_gen(1, 2), 3000);
    for (int r = 0; r < CY_RESTART_NREASONS; r++)
        assert_int_equal(restarts(0, r), 0);
    assert_true(log_has("no progress for 0."));
    assert_int_equal(stop(), 0);
    R.passed = true;
}

static void test_supervisor_run_drills(void **state)
{
    (void)state;
    start("ok");
    WAIT_FOR(running_gen(0, 1) && running_gen(1, 1), 3000);
    char out[512], want[128];

    /* kill: a crash from the outside, counted as a signal. */
    int64_t pid1 = cy_sb_load(&R.sb.slots[1].sv_pid);
    assert_int_equal(capture(cy_shard_drill, "kill", "1", out, sizeof(out)), 0);
    snprintf(want, sizeof(want), "shard 1 (pid %lld): sent SIGKILL\n", (long long)pid1);
    assert_string_equal(out, want);
    WAIT_FOR(restarts(1, CY_RESTART_SIGNAL) == 1, 2000);
    assert_string_equal(R.sb.slots[1].sv_last_reason, "exited with signal 9 (SIGKILL)");
    WAIT_FOR(running_gen(1, 2), 3000);
    assert_true(log_has("exited with signal 9 (SIGKILL) after"));

    /* stop: frozen, so no heartbeat, so replaced as hung. */
    int64_t pid0 = cy_sb_load(&R.sb.slots[0].sv_pid);
    assert_int_equal(capture(cy_shard_drill, "stop", "0", out, sizeof(out)), 0);
    snprintf(want, sizeof(want), "shard 0 (pid %lld): sent SIGSTOP\n", (long long)pid0);
    assert_string_equal(out, want);
    WAIT_FOR(restarts(0, CY_RESTART_HUNG) == 1, 2000);
    WAIT_FOR(running_gen(0, 2), 3000);
    assert_int_equal(restarts(0, CY_RESTART_SIGNAL), 0);

    /* Usage errors are 2, and send nothing. */
    assert_int_equal(capture(cy_shard_drill, "explode", "0", out, sizeof(out)), 2);
    assert_int_equal(capture(cy_shard_drill, "kill", "2", out, sizeof(out)), 2);
    assert_int_equal(capture(cy_shard_drill, "kill", "x", out, sizeof(out)), 2);
    assert_int_equal(capture(cy_shard_drill, "kill", "", out, sizeof(out)), 2);
    assert_int_equal(capture(cy_shard_drill, "kill", NULL, out, sizeof(out)), 2);
    assert_string_equal(out, "");
    assert_true(running_gen(0, 2) && running_gen(1, 2));

    char status[8192];
    assert_int_equal(capture(status_adapter, NULL, NULL, status, sizeof(status)), 0);
    assert_non_null(strstr(status, "0/0/1/0")); /* shard 0: one hung */
    assert_non_null(strstr(status, "0/1/0/0")); /* shard 1: one signal */
    assert_non_null(strstr(status, "exited with signal 9 (SIGKILL)"));

    assert_int_equal(stop(), 0);
    /* No supervisor: nothing to signal. */
    assert_int_equal(capture(cy_shard_drill, "kill", "0", out, sizeof(out)), 1);
    R.passed = true;
}

static void test_supervisor_run_unclean_stop_is_status_1(void **state)
{
    (void)state;
    start("badstop:0");
    WAIT_FOR(running_gen(0, 1) && running_gen(1, 1), 3000);
    assert_int_equal(stop(), 1);
    assert_true(log_has("stopped with status 3"));
    R.passed = true;
}

/* The state letter of pid in /proc/PID/stat, or '?'. */
static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return '?';
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

static bool reaped(pid_t p)
{
    pid_t r = waitpid(p, NULL, WNOHANG);
    return r == p || (r < 0 && errno == ECHILD);
}

static void test_supervisor_run_shards_exit_when_supervisor_dies(void **state)
{
    (void)state;
    start("ok");
    WAIT_FOR(running_gen(0, 1) && running_gen(1, 1), 3000);
    pid_t p0 = (pid_t)cy_sb_load(&R.sb.slots[0].pid);
    pid_t p1 = (pid_t)cy_sb_load(&R.sb.slots[1].pid);
    kill(R.sv, SIGKILL);
    waitpid(R.sv, NULL, 0);
    R.sv = 0;
    /* Each sees EOF on fd 4 (no other process holds its peer end). */
    WAIT_FOR(reaped(p0), 2000);
    WAIT_FOR(reaped(p1), 2000);
    /* A dead supervisor is reported as such. */
    char out[8192];
    assert_int_equal(capture(status_adapter, NULL, NULL, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "shard"));
    R.passed = true;
}

/* A shard that outlived its supervisor (here a stopped fake shard, which,
 * unlike a real one, asks for no death signal: as a shard of an older
 * binary, or one in uninterruptible sleep) is found at the next start by
 * the lock it holds, named in the log and killed; the new run comes up. */
static void test_supervisor_run_orphans_killed_at_next_start(void **state)
{
    (void)state;
    start("ok");
    WAIT_FOR(running_gen(0, 1) && running_gen(1, 1), 3000);
    pid_t p0 = (pid_t)cy_sb_load(&R.sb.slots[0].pid);
    pid_t p1 = (pid_t)cy_sb_load(&R.sb.slots[1].pid);
    assert_int_equal(kill(p1, SIGSTOP), 0);
    R.orphan = p1;
    WAIT_FOR(proc_state(p1) == 'T', 2000);
    kill(R.sv, SIGKILL);
    waitpid(R.sv, NULL, 0);
    R.sv = 0;
    WAIT_FOR(reaped(p0), 2000); /* running: it saw EOF on fd 4 */
    /* Stopped, it did not: it is ours now (subreaper) and alive. */
    assert_int_equal(waitpid(p1, NULL, WNOHANG), 0);
    cy_scoreboard_close(&R.sb);

    start("ok"); /* returns once the new scoreboard is up: after the lock */
    int st = 0;
    WAIT_FOR(waitpid(p1, &st, WNOHANG) == p1, 3000);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGKILL);
    R.orphan = 0;
    char needle[160];
    snprintf(needle, sizeof(needle), "shard 1 (pid %d) of a previous run on %s", (int)p1, R.dir);
    assert_true(log_has(needle));
    WAIT_FOR(running_gen(0, 1) && running_gen(1, 1), 3000);
    assert_int_equal(stop(), 0);
    R.passed = true;
}

static void test_supervisor_run_startup_failures(void **state)
{
    (void)state;
    char *pass[] = {NULL};
    /* A bad address and a port in use fail at once with status 1. */
    snprintf(R.cfg.mqtt_listen, sizeof(R.cfg.mqtt_listen), "nonsense");
    assert_int_equal(cy_supervisor_run(&R.cfg, R.exe, pass), 1);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {0};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(l, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(l, 1), 0);
    socklen_t len = sizeof(sin);
    getsockname(l, (struct sockaddr *)&sin, &len);
    snprintf(R.cfg.mqtt_listen, sizeof(R.cfg.mqtt_listen), "127.0.0.1:%u", ntohs(sin.sin_port));
    assert_int_equal(cy_supervisor_run(&R.cfg, R.exe, pass), 1);
    close(l);

    /* A second supervisor on the same data_dir refuses to start. */
    snprintf(R.cfg.mqtt_listen, sizeof(R.cfg.mqtt_listen), "127.0.0.1:0");
    start("ok");
    WAIT_FOR(running_gen(0, 1) && running_gen(1, 1), 3000);
    assert_int_equal(cy_supervisor_run(&R.cfg, R.exe, pass), 1);
    assert_int_equal(cy_sb_load(&R.sb.hdr->supervisor_pid), R.sv); /* untouched */
    /* ... and says who holds it, also when that supervisor is stopped. */
    char needle[160];
    snprintf(needle, sizeof(needle), "another cyan (supervisor pid %d) is running on %s", (int)R.sv,
             R.dir);
    assert_int_equal(run_second(), 1);
    assert_true(log_has(needle));
    assert_int_equal(kill(R.sv, SIGSTOP), 0);
    WAIT_FOR(proc_state(R.sv) == 'T', 2000); /* a signal lands asynchronously */
    assert_int_equal(run_second(), 1);
    assert_true(log_has("(it is stopped: SIGCONT or SIGKILL it)"));
    assert_int_equal(kill(R.sv, SIGCONT), 0);
    assert_int_equal(cy_sb_load(&R.sb.hdr->supervisor_pid), R.sv);
    assert_int_equal(stop(), 0);

    /* A binary that cannot be spawned: status 1, bounded. */
    cy_scoreboard_close(&R.sb);
    snprintf(R.exe, sizeof(R.exe), "/nonexistent/cyan");
    start_nowait("ok");
    int st = 0;
    WAIT_FOR(waitpid(R.sv, &st, WNOHANG) == R.sv, 3000);
    R.sv = 0;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 1);
    R.passed = true;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "shard")) return fake_shard_main(argc, argv);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_supervisor_run_spawns_serves_and_stops_cleanly),
        T(test_supervisor_run_crash_loop_backs_off),
        T(test_supervisor_run_hung_shard_killed),
        T(test_supervisor_run_stuck_shard_killed),
        T(test_supervisor_run_drills),
        T(test_supervisor_run_unclean_stop_is_status_1),
        T(test_supervisor_run_shards_exit_when_supervisor_dies),
        T(test_supervisor_run_orphans_killed_at_next_start),
        T(test_supervisor_run_startup_failures),
    };
    return cmocka_run_group_tests_name("supervisor_run", tests, NULL, NULL);
}
