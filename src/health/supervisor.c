/* supervisor: process 0 of a node. It owns the listening socket and the
 * scoreboard, spawns one process per shard, and replaces a shard that died,
 * whose loop stopped (hung) or whose work stopped moving (stuck). It serves
 * nothing itself, so nothing a device sends can wedge it.
 *
 * The idea needed to read this file: every shard is a small state machine
 * driven by three events, all on the supervisor's own libuv loop:
 *   spawn        -> child alive; slot reset to STARTING with a fresh
 *                   heartbeat before the exec, so neither a stale beat nor
 *                   the previous process's counters are judged;
 *   tick (100 ms)-> sample the slot, judge it (watchdog.c); a verdict
 *                   SIGKILLs the child and remembers why, because the exit
 *                   callback will only see "signal 9";
 *   exit_cb      -> slot DOWN, the restart counted by reason, and the next
 *                   spawn scheduled now or after the crash-loop backoff.
 * The tick judges in two passes: first heartbeats, then progress. A shard
 * killed in the first pass is marked DOWN at once, so the frames it had sent
 * and never saw acknowledged stop counting as work owed by its peers: one
 * hung shard must not get a healthy idle peer killed as stuck.
 *
 * The listening socket is made with plain socket/bind/listen rather than a
 * uv_tcp_t: the supervisor must never accept (a libuv listener would accept
 * one connection into the supervisor), and uv_tcp_bind defers EADDRINUSE to
 * uv_listen, which we never call. SO_REUSEADDR is set as libuv would.
 *
 * Shards are spawned detached (their own session), so a Ctrl-C at a
 * terminal reaches only the supervisor, which then stops them in order. A
 * supervisor that dies anyway takes its shards with it: each shard asks the
 * kernel for SIGKILL at its parent's death (PR_SET_PDEATHSIG, set in
 * shard.c), which ends it whatever its state, stopped or spinning included;
 * the EOF on fd 4 is the second way a running shard notices.
 *
 * The data folder's lock (data_dir/run/lock) makes "one node per data
 * folder" checkable: the supervisor holds an exclusive flock on it and
 * every shard inherits that same open file as fd 6, so the lock is free
 * only when no process of the run is left. At start a held lock means one
 * of two things, told apart through /proc: a live supervisor (the pid
 * written in the file, if that process has the lock file open; or the
 * parent of a shard holding it, if the parent has it open too): refuse and
 * name its pid; or shards whose supervisor is gone (a process that has the
 * lock file open as its fd 6 and argv[1] "shard" or "monitor", whose parent does not
 * have it open): name each and SIGKILL it, then wait for the lock. A
 * process that merely reuses a recorded pid cannot have our lock file open,
 * so it is never killed.
 */
#include "health/supervisor.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_limit.h"
#include "core/cy_log.h"
#include "core/cy_tls.h"
#include "core/cy_version.h"
#include "health/scoreboard.h"
#include "health/sdnotify.h"
#include "health/watchdog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#define TICK_MS 100
#define HEALTH_MS 1000 /* the supervisor judges itself at least this often */
#define STOP_GRACE_MS 10000
#define LISTEN_BACKLOG 1024
#define LOCK_FD 6         /* where every shard holds the data folder's lock */
#define LOCK_WAIT_MS 5000 /* for orphans we killed to let go of the lock */
#define LOCK_POLL_MS 20
#define MAX_ORPHANS 64 /* named once each in the log */
#define SETTING_ARG_MAX 640 /* "--name=value" of the longest setting (data_dir: 511 bytes) */

typedef struct sv sv;
typedef struct shard shard;

/* One spawned process; freed in its close callback. */
typedef struct child {
    uv_process_t proc;
    shard *sh;
    int sock; /* our end of its fd-4 socketpair; open for the child's lifetime */
} child;

/* A shard, or the monitor (idx == n: the slot after the shards'). */
struct shard {
    sv *sv;
    unsigned idx;
    bool monitor;
    char name[24];      /* "shard 3" or "monitor", for logs */
    int64_t generation; /* spawns of this index so far */
    child *child;       /* NULL while down */
    int64_t pid;
    uv_timer_t respawn;
    cy_watch watch;
    int64_t running_since_ms; /* first sample RUNNING in this generation; 0 before */
    int64_t accepting_since_ms; /* first sample accepting clients in it; 0 before */
    bool ever_running;          /* some generation reached RUNNING ("all N shards running") */
    int64_t backoff_ms;       /* the last crash-loop delay; 0 after a good run */
    int killed_reason;        /* CY_RESTART_* if we killed it, else -1 */
    int64_t killed_delay_ms;
    int64_t killed_ms; /* when we sent SIGKILL to the current child (verdict), 0 = not */
    int64_t spawn_failing_since_ms; /* first of the failed spawns in a row, 0 = none */
    char killed_why[128];
    bool stop_killed; /* shutdown: needed SIGKILL */
};

struct sv {
    const cy_config *cfg;
    const char *exe;
    char *const *pass;
    size_t npass;
    uv_loop_t loop;
    uv_timer_t tick, stop_timer;
    uv_signal_t sigterm, sigint, sighup, sigusr1, sigusr2;
    bool told_usr1, told_usr2; /* logged once */
    cy_config live;            /* the settings of this run; reloads change some */
    int listen_fd;
    int mqtts_fd;  /* MQTT over TLS (mqtts_listen, with tls_cert); -1 when off */
    int http_fd; /* -1 when the HTTP API is off */
    int ops_fd;  /* the monitor's listener (ops_listen); -1 when off */
    int coap_fd; /* plain CoAP, one UDP socket every shard reads; -1 when off */
    int *coaps_fd; /* CoAP over DTLS: shard i's UDP socket of one SO_REUSEPORT group, or NULL */
    int lock_fd; /* data_dir/run/lock, flock'ed; shards inherit it as fd 6 */
    cy_scoreboard sb;
    unsigned n;     /* shards */
    unsigned nproc; /* processes watched: the shards, then the monitor if on */
    unsigned alive;
    bool all_running; /* every shard reached RUNNING once (logged) */
    bool ready;       /* every shard accepted clients at once: READY=1 sent */
    bool stopping, finished;
    int result;
    /* systemd (sdnotify.h) and the supervisor's own health */
    cy_sdnotify sd;
    bool notify_failing;    /* the last send failed (logged once until one works) */
    bool healthy;           /* the last judgement of itself */
    int64_t started_ms;     /* monotonic ms at start, for "ready in 1.2 s" */
    int64_t last_ping_ms;   /* the last WATCHDOG=1 */
    int64_t last_health_ms; /* the last judgement */
    char sb_path[640];      /* data_dir/run/scoreboard */
    dev_t sb_dev;           /* what it was when we made it */
    ino_t sb_ino;
    char status[256]; /* the last STATUS= sent */
    char unhealthy_why[256];
    shard shards[CY_SB_MAX_SHARDS + 1];
};

static void spawn_shard(shard *sh);
static void feed_systemd(sv *s, int64_t now);

static double secs(int64_t ms)
{
    return (double)ms / 1000.0;
}

static const char *signame(int sig)
{
    switch (sig) {
    case SIGHUP:
        return "SIGHUP";
    case SIGINT:
        return "SIGINT";
    case SIGQUIT:
        return "SIGQUIT";
    case SIGILL:
        return "SIGILL";
    case SIGTRAP:
        return "SIGTRAP";
    case SIGABRT:
        return "SIGABRT";
    case SIGBUS:
        return "SIGBUS";
    case SIGFPE:
        return "SIGFPE";
    case SIGKILL:
        return "SIGKILL";
    case SIGUSR1:
        return "SIGUSR1";
    case SIGSEGV:
        return "SIGSEGV";
    case SIGUSR2:
        return "SIGUSR2";
    case SIGPIPE:
        return "SIGPIPE";
    case SIGALRM:
        return "SIGALRM";
    case SIGTERM:
        return "SIGTERM";
    case SIGXCPU:
        return "SIGXCPU";
    case SIGXFSZ:
        return "SIGXFSZ";
    case SIGSYS:
        return "SIGSYS";
    default:
        return "?";
    }
}

/* One message to systemd, if it listens. A failure is logged once until a
 * send works again (the watchdog pings would repeat it twice a second). */
static void notify(sv *s, const char *state)
{
    if (s->sd.fd < 0) return;
    int rc = cy_sdnotify_send(&s->sd, state);
    if (rc && !s->notify_failing)
        cy_warn(NULL, "supervisor: notify %.40s to %s: %s (logged once)", state, s->sd.socket,
                cy_strerror(rc));
    s->notify_failing = rc != 0;
}

static int mkdir_p(const char *path)
{
    char tmp[1024];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp)) return CY_EINVAL;
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0700) && errno != EEXIST) return -errno;
            *p = '/';
        }
    if (mkdir(tmp, 0700) && errno != EEXIST) return -errno;
    return 0;
}

static void set_reason(cy_sb_slot *slot, const char *text)
{
    char buf[sizeof(slot->sv_last_reason)];
    snprintf(buf, sizeof(buf), "%s", text);
    memcpy(slot->sv_last_reason, buf, sizeof(buf));
}

/* ---- closing ---- */

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Close every handle the supervisor owns; the loop then runs dry. */
static void finish(sv *s)
{
    if (s->finished) return;
    s->finished = true;
    close_handle((uv_handle_t *)&s->tick);
    close_handle((uv_handle_t *)&s->stop_timer);
    close_handle((uv_handle_t *)&s->sigterm);
    close_handle((uv_handle_t *)&s->sigint);
    close_handle((uv_handle_t *)&s->sighup);
    close_handle((uv_handle_t *)&s->sigusr1);
    close_handle((uv_handle_t *)&s->sigusr2);
    for (unsigned i = 0; i < s->nproc; i++)
        close_handle((uv_handle_t *)&s->shards[i].respawn);
}

static void on_child_closed(uv_handle_t *h)
{
    cy_free(h->data);
}

/* ---- shutdown ---- */

static void on_stop_timeout(uv_timer_t *t)
{
    sv *s = t->data;
    for (unsigned i = 0; i < s->nproc; i++) {
        shard *sh = &s->shards[i];
        if (!sh->child) continue;
        cy_warn(NULL, "%s (pid %lld) did not stop within %.0f s: SIGKILL", sh->name,
                (long long)sh->pid, secs(STOP_GRACE_MS));
        sh->stop_killed = true;
        uv_process_kill(&sh->child->proc, SIGKILL);
    }
}

static void begin_stop(sv *s, const char *why)
{
    s->stopping = true;
    char msg[160];
    snprintf(msg, sizeof(msg), "STOPPING=1\nSTATUS=stopping: %.100s", why);
    notify(s, msg);
    cy_scoreboard_event(&s->sb, cy_wall_ms(), CY_SB_EVENT_STOP, -1, getpid(), 0, -1, why);
    cy_info(NULL, "supervisor: %s: stopping %u process%s", why, s->alive, s->alive == 1 ? "" : "es");
    for (unsigned i = 0; i < s->nproc; i++) {
        shard *sh = &s->shards[i];
        uv_timer_stop(&sh->respawn);
        if (!sh->child) {
            s->result = 1; /* down after a failure, waiting to be respawned */
            continue;
        }
        /* SIGCONT first, so a stopped shard sees the SIGTERM; not after it,
         * where it would land in a shard already exiting (and can wedge a
         * sanitizer's leak check, which ptrace-stops the process). */
        uv_process_kill(&sh->child->proc, SIGCONT);
        uv_process_kill(&sh->child->proc, SIGTERM);
    }
    if (s->alive == 0)
        finish(s);
    else
        uv_timer_start(&s->stop_timer, on_stop_timeout, STOP_GRACE_MS, 0);
}

static void on_signal(uv_signal_t *h, int signum)
{
    sv *s = h->data;
    if (!s->stopping) {
        begin_stop(s, signame(signum));
        return;
    }
    cy_warn(NULL, "supervisor: %s again: killing %u process%s now", signame(signum), s->alive,
            s->alive == 1 ? "" : "es");
    for (unsigned i = 0; i < s->nproc; i++)
        if (s->shards[i].child) {
            s->shards[i].stop_killed = true;
            uv_process_kill(&s->shards[i].child->proc, SIGKILL);
        }
}

/* ---- reload (SIGHUP) ---- */

static cy_supervisor_check_fn reload_check;

void cy_supervisor_set_reload_check(cy_supervisor_check_fn fn)
{
    reload_check = fn;
}

static void reload_config(sv *s);

/* systemd hears of the reload (RELOADING=1 with the monotonic clock, as
 * Type=notify-reload wants; harmless to Type=notify), then READY=1 when it
 * is done, whatever its outcome: the node serves throughout. */
static void reload(sv *s)
{
    if (s->ready) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        char msg[96];
        snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
                 (unsigned long long)ts.tv_sec * 1000000ull +
                     (unsigned long long)ts.tv_nsec / 1000);
        notify(s, msg);
    }
    reload_config(s);
    if (s->ready) notify(s, "READY=1");
}

/* Re-read the settings as at start (the -c file, then the command line's
 * --name=value on top), apply those that may change at runtime, name each
 * other change as not applied, and send the shards the runtime settings
 * over their fd 4 (see shard.c). A file with an error changes nothing. */
static void reload_config(sv *s)
{
    cy_config next;
    cy_config_error err;
    int rc = cy_config_load_args(&next, s->pass, &err);
    if (!rc && reload_check) rc = reload_check(&next, err.msg, sizeof(err.msg));
    if (rc) {
        cy_error(NULL, "supervisor: SIGHUP: config not reloaded, nothing changed: %s", err.msg);
        return;
    }
    if (next.tls_cert[0] || next.tls_key[0]) {
        /* Each shard reads the files again (a new SSL_CTX for new
         * connections) and keeps its certificate when they are broken;
         * said here once, with the file's name. */
        char terr[300];
        cy_tls_options o;
        cy_tls_options_of(&next, &o);
        if (cy_tls_check(&o, terr, sizeof(terr)))
            cy_error(NULL,
                     "supervisor: SIGHUP: TLS: %s; the shards keep the certificate they "
                     "have",
                     terr);
        else if (s->mqtts_fd < 0)
            cy_warn(NULL, "supervisor: SIGHUP: tls_cert is set but cyan started without an "
                          "mqtts_listen listener: restart to serve MQTT over TLS");
    }
    char applied[900] = "";
    size_t n = 0, kept = 0;
    cy_log_level old = CY_LOG_INFO;
    cy_log_parse_level(s->live.log_level, &old);
    for (size_t i = 0; i < cy_config_count(); i++) {
        char a[600], b[600];
        cy_config_value(&s->live, i, a, sizeof(a));
        cy_config_value(&next, i, b, sizeof(b));
        if (!strcmp(a, b)) continue;
        if (cy_config_reloadable(i)) {
            if (n < sizeof(applied))
                n += (size_t)snprintf(applied + n, sizeof(applied) - n, "%s%s %s -> %s",
                                      n ? ", " : "", cy_config_name(i), a, b);
            cy_config_set(&s->live, cy_config_name(i), b, NULL);
        } else {
            kept++;
            cy_warn(NULL,
                    "supervisor: SIGHUP: %s changed (%.200s -> %.200s) but cannot change at "
                    "runtime: not applied; restart to apply it",
                    cy_config_name(i), a, b);
        }
    }
    cy_log_level lvl = old;
    cy_log_parse_level(s->live.log_level, &lvl);
    /* One message for every shard: each runtime setting, then an empty line. */
    char msg[4096];
    size_t m = 0;
    for (size_t i = 0; i < cy_config_count() && m < sizeof(msg); i++) {
        if (!cy_config_reloadable(i)) continue;
        char v[600];
        cy_config_value(&s->live, i, v, sizeof(v));
        m += (size_t)snprintf(msg + m, sizeof(msg) - m, "%s=%s\n", cy_config_name(i), v);
    }
    if (m + 2 > sizeof(msg)) {
        cy_error(NULL, "supervisor: SIGHUP: the runtime settings exceed %zu bytes: not sent",
                 sizeof(msg));
        return;
    }
    msg[m++] = '\n';
    unsigned sent = 0;
    for (unsigned i = 0; i < s->nproc; i++) {
        child *c = s->shards[i].child;
        if (!c) continue; /* a respawn gets the new settings on its command line */
        ssize_t w = send(c->sock, msg, m, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w == (ssize_t)m)
            sent++;
        else
            cy_warn(NULL, "supervisor: SIGHUP: %s (pid %lld) did not take the reload: %s",
                    s->shards[i].name, (long long)s->shards[i].pid,
                    w < 0 ? strerror(errno) : "its pipe is full (is it stopped?)");
    }
    /* Shown under the old level or the new one, whichever says more. */
    cy_log_set_level(lvl < old ? lvl : old);
    cy_info(NULL, "supervisor: SIGHUP: reloaded the config: %s%s; %zu change%s not applied; "
            "sent to %u shard%s",
            n ? "applied " : "no runtime setting changed", applied, kept,
            kept == 1 ? "" : "s", sent, sent == 1 ? "" : "s");
    cy_log_set_level(lvl);
}

static void on_other_signal(uv_signal_t *h, int signum)
{
    sv *s = h->data;
    if (signum == SIGHUP) {
        if (!s->stopping) reload(s);
        return;
    }
    bool *told = signum == SIGUSR1 ? &s->told_usr1 : &s->told_usr2;
    if (!*told)
        cy_warn(NULL,
                "supervisor: %s ignored (logged once): cyan writes its log to stderr and has "
                "nothing to reopen; SIGHUP reloads the config",
                signame(signum));
    *told = true;
}

/* ---- exits and respawns ---- */

static void on_respawn(uv_timer_t *t)
{
    shard *sh = t->data;
    if (!sh->sv->stopping) spawn_shard(sh);
}

static void schedule(shard *sh, int64_t delay_ms)
{
    if (delay_ms <= 0)
        spawn_shard(sh);
    else
        uv_timer_start(&sh->respawn, on_respawn, (uint64_t)delay_ms, 0);
}

static void on_child_exit(uv_process_t *proc, int64_t exit_status, int term_signal)
{
    child *c = proc->data;
    shard *sh = c->sh;
    sv *s = sh->sv;
    cy_sb_slot *slot = &s->sb.slots[sh->idx];
    int64_t now = cy_mono_ms();
    int64_t ran = now - sh->watch.spawned_ms;
    long long pid = (long long)sh->pid;
    int64_t last_state = cy_sb_load(&slot->state);

    cy_sb_store(&slot->state, CY_SHARD_DOWN);
    cy_sb_store(&slot->sv_pid, 0);
    close(c->sock);
    uv_close((uv_handle_t *)proc, on_child_closed);
    sh->child = NULL;
    s->alive--;

    if (s->stopping) {
        /* Our SIGTERM can beat a starting shard to installing its handler:
         * it stopped on request with nothing served, so that is clean. */
        bool early = term_signal == SIGTERM && last_state == CY_SHARD_STARTING;
        if (exit_status != 0 || (term_signal != 0 && !early) || sh->stop_killed) {
            s->result = 1;
            if (term_signal)
                cy_warn(NULL, "%s (pid %lld) stopped by signal %d (%s)", sh->name, pid,
                        term_signal, signame(term_signal));
            else
                cy_warn(NULL, "%s (pid %lld) stopped with status %lld", sh->name, pid,
                        (long long)exit_status);
        } else {
            cy_debug(NULL, "%s (pid %lld) stopped", sh->name, pid);
        }
        if (s->alive == 0) finish(s);
        return;
    }

    char text[128];
    int reason;
    int64_t delay;
    if (sh->killed_reason >= 0) {
        reason = sh->killed_reason; /* logged when we killed it */
        snprintf(text, sizeof(text), "%s", sh->killed_why);
        delay = sh->killed_delay_ms;
    } else {
        if (term_signal) {
            reason = CY_RESTART_SIGNAL;
            snprintf(text, sizeof(text), "exited with signal %d (%s)", term_signal,
                     signame(term_signal));
        } else {
            reason = CY_RESTART_EXIT;
            snprintf(text, sizeof(text), "exited with status %lld", (long long)exit_status);
        }
        delay = cy_backoff_next(sh->backoff_ms, ran);
        if (delay > 0) sh->backoff_ms = delay;
        if (delay > 0)
            cy_info(NULL, "%s (pid %lld) %s after %.1f s; respawning in %g s (crash loop)",
                    sh->name, pid, text, secs(ran), secs(delay));
        else
            cy_info(NULL, "%s (pid %lld) %s after %.1f s; respawning", sh->name, pid, text,
                    secs(ran));
    }
    /* The text first, then the count, with a release fence: a reader that
     * sees the new count sees the text that goes with it. */
    set_reason(slot, text);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    cy_sb_store(&slot->sv_restarts[reason], cy_sb_load(&slot->sv_restarts[reason]) + 1);
    cy_sb_store(&slot->sv_last_restart_ms, now);
    cy_sb_store(&slot->sv_backoff_ms, delay);
    cy_scoreboard_event(&s->sb, cy_wall_ms(), CY_SB_EVENT_RESTART, (int)sh->idx, sh->pid,
                        sh->generation, reason, text);
    schedule(sh, delay);
}

/* Reset the slot for a new process and start it. */
static void spawn_shard(shard *sh)
{
    sv *s = sh->sv;
    cy_sb_slot *slot = &s->sb.slots[sh->idx];
    int64_t now = cy_mono_ms();
    int64_t gen = sh->generation + 1;

    /* Nobody owns the slot now (the previous process is reaped): reset the
     * shard's fields before the exec, so the new process can only find
     * them in this state, then take over. */
    cy_sb_store(&slot->pid, 0);
    cy_sb_store(&slot->generation, gen);
    cy_sb_store(&slot->started_ms, 0);
    cy_sb_store(&slot->heartbeat_ms, now);
    cy_sb_storeu(&slot->loops, 0);
    cy_sb_storeu(&slot->progress, 0);
    cy_sb_storeu(&slot->queued, 0);
    cy_sb_storeu(&slot->connections, 0);
    cy_sb_store(&slot->ready, 0);
    cy_sb_store(&slot->accepting, 0);
    for (unsigned j = 0; j < CY_SB_MAX_SHARDS; j++) {
        cy_sb_storeu(&slot->bus_sent[j], 0);
        cy_sb_storeu(&slot->bus_acked[j], 0);
    }
    for (unsigned j = 0; j < CY_SB_COUNTERS; j++) {
        cy_sb_storeu(&slot->counters[j], 0);
        cy_sb_store(&slot->changed_ms[j], 0);
    }
    cy_sb_store(&slot->progress_ms, 0);
    for (unsigned h = 0; h < CY_SB_HISTS; h++) {
        for (unsigned j = 0; j < CY_SB_HIST_WORDS; j++)
            cy_sb_storeu(&slot->hists[h][j], 0);
        cy_sb_store(&slot->hist_changed_ms[h], 0);
    }
    cy_sb_store(&slot->state, CY_SHARD_STARTING);

    char idx[16], genbuf[24];
    snprintf(idx, sizeof(idx), "%u", sh->idx);
    snprintf(genbuf, sizeof(genbuf), "%lld", (long long)gen);
    size_t nset = cy_config_count();
    char **args = cy_calloc(s->npass + nset + 5, sizeof(char *));
    char *text = cy_malloc(nset * SETTING_ARG_MAX);
    child *c = cy_calloc(1, sizeof(*c));
    int sp[2] = {-1, -1};
    int rc;
    if (!args || !text || !c) {
        rc = CY_ENOMEM;
        goto fail;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) {
        rc = -errno;
        goto fail;
    }
    args[0] = (char *)s->exe;
    args[1] = sh->monitor ? "monitor" : "shard";
    args[2] = idx;
    args[3] = genbuf;
    /* The command line's words, without the config file: a shard takes
     * every setting from the supervisor's view of this run, so one started
     * after a reload has the reloaded settings, and a file edited since
     * (or broken) cannot reach it. */
    size_t na = 4;
    for (size_t k = 0; k < s->npass; k++) {
        if (!strcmp(s->pass[k], "-c") || !strcmp(s->pass[k], "--config")) {
            k++;
            continue;
        }
        args[na++] = s->pass[k];
    }
    for (size_t i = 0; i < nset; i++) {
        char *a = text + i * SETTING_ARG_MAX;
        int k = snprintf(a, SETTING_ARG_MAX, "--%s=", cy_config_name(i));
        cy_config_value(&s->live, i, a + k, SETTING_ARG_MAX - (size_t)k);
        args[na++] = a;
    }

    uv_stdio_container_t stdio[10];
    stdio[0].flags = UV_IGNORE; /* /dev/null */
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = 1;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    /* A shard gets the MQTT and HTTP listeners as fds 3 and 5; the monitor
     * gets the operations listener as fd 3 and nothing as fd 5. */
    stdio[3].flags = UV_INHERIT_FD;
    stdio[3].data.fd = sh->monitor ? s->ops_fd : s->listen_fd;
    if (stdio[3].data.fd < 0) stdio[3].flags = UV_IGNORE;
    stdio[4].flags = UV_INHERIT_FD;
    stdio[4].data.fd = sp[1];
    if (s->http_fd >= 0 && !sh->monitor) {
        stdio[5].flags = UV_INHERIT_FD;
        stdio[5].data.fd = s->http_fd;
    } else {
        stdio[5].flags = UV_IGNORE;
    }
    stdio[6].flags = UV_INHERIT_FD; /* the data folder's lock: see the file comment */
    stdio[6].data.fd = s->lock_fd;
    /* CoAP: the shared plain socket as fd 7, the shard's own DTLS socket
     * as fd 8 (the supervisor keeps every one open, so the SO_REUSEPORT
     * group, and with it which shard a device's address reaches, does not
     * change when a shard is replaced). */
    stdio[7].flags = UV_IGNORE;
    stdio[8].flags = UV_IGNORE;
    if (!sh->monitor && s->coap_fd >= 0) {
        stdio[7].flags = UV_INHERIT_FD;
        stdio[7].data.fd = s->coap_fd;
    }
    if (!sh->monitor && s->coaps_fd) {
        stdio[8].flags = UV_INHERIT_FD;
        stdio[8].data.fd = s->coaps_fd[sh->idx];
    }
    /* MQTT over TLS: one listening socket shared like MQTT's, as fd 9. */
    stdio[9].flags = UV_IGNORE;
    if (!sh->monitor && s->mqtts_fd >= 0) {
        stdio[9].flags = UV_INHERIT_FD;
        stdio[9].data.fd = s->mqtts_fd;
    }
    uv_process_options_t opt;
    memset(&opt, 0, sizeof(opt));
    opt.file = s->exe;
    opt.args = args;
    opt.exit_cb = on_child_exit;
    opt.flags = UV_PROCESS_DETACHED;
    opt.stdio_count = 10;
    opt.stdio = stdio;
    c->sh = sh;
    c->sock = sp[0];
    c->proc.data = c;
    rc = uv_spawn(&s->loop, &c->proc, &opt);
    close(sp[1]);
    sp[1] = -1;
    if (rc) {
        /* A failed uv_spawn still leaves an initialised handle to close. */
        close(sp[0]);
        uv_close((uv_handle_t *)&c->proc, on_child_closed);
        c = NULL;
        goto fail;
    }
    cy_free(args);
    cy_free(text);
    sh->generation = gen;
    sh->child = c;
    sh->pid = c->proc.pid;
    sh->killed_reason = -1;
    sh->killed_ms = 0;
    sh->spawn_failing_since_ms = 0;
    sh->running_since_ms = 0;
    sh->accepting_since_ms = 0;
    cy_watch_init(&sh->watch, now);
    s->alive++;
    cy_sb_store(&slot->sv_pid, sh->pid);
    int64_t zero = 0; /* the shard may have written its pid first: same value */
    __atomic_compare_exchange_n(&slot->pid, &zero, sh->pid, false, __ATOMIC_RELAXED,
                                __ATOMIC_RELAXED);
    cy_info(NULL, "%s (pid %lld) started, generation %lld", sh->name, (long long)sh->pid,
            (long long)gen);
    cy_scoreboard_event(&s->sb, cy_wall_ms(), CY_SB_EVENT_SPAWN, (int)sh->idx, sh->pid, gen, -1,
                        NULL);
    return;
fail:
    if (sp[0] >= 0 && c) close(sp[0]);
    if (sp[1] >= 0) close(sp[1]);
    cy_free(c);
    cy_free(args);
    cy_free(text);
    cy_sb_store(&slot->state, CY_SHARD_DOWN);
    cy_sb_store(&slot->sv_pid, 0);
    sh->backoff_ms = cy_backoff_next(sh->backoff_ms, 0);
    if (!sh->spawn_failing_since_ms) sh->spawn_failing_since_ms = now;
    char why[128];
    snprintf(why, sizeof(why), "cannot spawn %.80s: %s", s->exe, uv_strerror(rc));
    set_reason(slot, why);
    cy_sb_store(&slot->sv_backoff_ms, sh->backoff_ms);
    cy_error(NULL, "%s: %s; retrying in %g s", sh->name, why, secs(sh->backoff_ms));
    if (!s->stopping) uv_timer_start(&sh->respawn, on_respawn, (uint64_t)sh->backoff_ms, 0);
}

/* ---- judging ---- */

static void kill_shard(shard *sh, cy_verdict v, const char *why, int64_t now)
{
    sv *s = sh->sv;
    cy_sb_slot *slot = &s->sb.slots[sh->idx];
    uv_process_kill(&sh->child->proc, SIGKILL);
    sh->killed_ms = now;
    /* Dead to its peers from now on (see the file comment). */
    cy_sb_store(&slot->state, CY_SHARD_DOWN);
    sh->killed_reason = cy_watchdog_reason(v);
    snprintf(sh->killed_why, sizeof(sh->killed_why), "%s", why);
    int64_t delay = cy_backoff_next(sh->backoff_ms, now - sh->watch.spawned_ms);
    if (delay > 0) sh->backoff_ms = delay;
    sh->killed_delay_ms = delay;
    if (delay > 0)
        cy_info(NULL, "%s (pid %lld) %s: killed, respawning in %g s (crash loop)", sh->name,
                (long long)sh->pid, why, secs(delay));
    else
        cy_info(NULL, "%s (pid %lld) %s: killed, respawning", sh->name, (long long)sh->pid,
                why);
}

static cy_verdict judge(sv *s, shard *sh, int64_t now, char *why, size_t len)
{
    const cy_sb_slot *slot = &s->sb.slots[sh->idx];
    cy_watch_sample smp;
    smp.state = cy_sb_load(&slot->state);
    smp.heartbeat_ms = cy_sb_load(&slot->heartbeat_ms);
    smp.progress = cy_sb_loadu(&slot->progress);
    smp.backlog = cy_scoreboard_backlog(&s->sb, sh->idx);
    cy_verdict v = cy_watchdog_judge(&sh->watch, &smp, now, s->cfg->watchdog_timeout, why, len);
    if (smp.state == CY_SHARD_RUNNING && v == CY_VERDICT_OK) {
        if (!sh->running_since_ms) sh->running_since_ms = now;
        sh->ever_running = true;
        if (sh->backoff_ms && now - sh->running_since_ms >= CY_BACKOFF_RESET_MS) {
            sh->backoff_ms = 0; /* it stayed up: the crash loop is over */
            cy_sb_store(&s->sb.slots[sh->idx].sv_backoff_ms, 0);
        }
    }
    return v;
}

/* The canary's verdict on a shard the watchdog found OK: its canary has
 * not walked the whole path for canary_timeout. Judged only when the
 * verdict can be trusted: the monitor is running, its heartbeat is fresh
 * and it has run for a canary_timeout (its canaries had time to connect);
 * the shard has accepted clients for a canary_timeout; and, with several
 * shards, not every canary is failing: that says the monitor or the path
 * they share is broken (the alert says so), and restarting every shard
 * would turn a monitoring fault into an outage. */
static bool canary_failing(sv *s, shard *sh, int64_t now, char *why, size_t len)
{
    const cy_sb_header *h = s->sb.hdr;
    int64_t limit = cy_sb_load(&h->canary_timeout_ms);
    if (limit <= 0 || sh->monitor || s->nproc == s->n) return false;
    const cy_sb_slot *m = cy_scoreboard_monitor(&s->sb);
    int64_t mstart = cy_sb_load(&m->started_ms);
    if (cy_sb_load(&m->state) != CY_SHARD_RUNNING || !mstart || now - mstart <= limit ||
        now - cy_sb_load(&m->heartbeat_ms) > s->cfg->watchdog_timeout)
        return false;
    /* A shard is judged from when it accepts clients: a canary cannot reach
     * one that still waits for its peers at start (up to 5 s). */
    for (unsigned i = 0; i < s->n; i++) {
        shard *o = &s->shards[i];
        if (!o->running_since_ms || !cy_sb_load(&s->sb.slots[o->idx].accepting))
            o->accepting_since_ms = 0;
        else if (!o->accepting_since_ms)
            o->accepting_since_ms = now;
    }
    if (!sh->accepting_since_ms) return false;
    unsigned failing = 0;
    for (unsigned i = 0; i < s->n; i++) {
        const shard *o = &s->shards[i];
        failing += o->accepting_since_ms &&
                   cy_canary_failing(now, limit, o->accepting_since_ms,
                                     cy_sb_load(&h->canary_ok_ms[i]), 1, 0, NULL, 0);
    }
    return cy_canary_failing(now, limit, sh->accepting_since_ms,
                             cy_sb_load(&h->canary_ok_ms[sh->idx]), s->n, failing, why, len);
}

static void on_tick(uv_timer_t *t)
{
    sv *s = t->data;
    int64_t now = cy_mono_ms();
    cy_sb_store(&s->sb.hdr->supervisor_heartbeat_ms, now);
    if (s->stopping) return;
    char why[128];
    /* Pass 1: loops that stopped (and shards that never started). */
    for (unsigned i = 0; i < s->nproc; i++) {
        shard *sh = &s->shards[i];
        if (!sh->child || sh->killed_reason >= 0) continue;
        cy_verdict v = judge(s, sh, now, why, sizeof(why));
        if (v == CY_VERDICT_HUNG || v == CY_VERDICT_START_TIMEOUT) kill_shard(sh, v, why, now);
    }
    /* Pass 2: work that stopped moving, with the dead excluded from backlogs. */
    for (unsigned i = 0; i < s->n; i++) {
        shard *sh = &s->shards[i];
        if (!sh->child || sh->killed_reason >= 0) continue;
        cy_verdict v = judge(s, sh, now, why, sizeof(why));
        if (v != CY_VERDICT_OK) kill_shard(sh, v, why, now);
    }
    /* Pass 3: what the canaries found (see canary_failing). */
    for (unsigned i = 0; i < s->n; i++) {
        shard *sh = &s->shards[i];
        if (!sh->child || sh->killed_reason >= 0) continue;
        if (canary_failing(s, sh, now, why, sizeof(why))) kill_shard(sh, CY_VERDICT_CANARY, why, now);
    }
    if (!s->all_running) {
        unsigned up = 0;
        for (unsigned i = 0; i < s->n; i++)
            up += s->shards[i].ever_running;
        if (up == s->n) {
            s->all_running = true; /* processes up; ready once they accept (feed_systemd) */
            cy_info(NULL, "supervisor: all %u shards running", s->n);
        }
    }
    feed_systemd(s, now);
}

/* ---- readiness, status and health (systemd: sdnotify.h) ---- */

/* "127.0.0.1:1883" or "[::1]:1883" of a bound socket, or the configured
 * text when the kernel will not say. */
static void bound_addr(int fd, const char *configured, char *out, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char ip[INET6_ADDRSTRLEN];
    snprintf(out, len, "%s", configured);
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) return;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        if (inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip)))
            snprintf(out, len, "%s:%u", ip, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip)))
            snprintf(out, len, "[%s]:%u", ip, ntohs(a->sin6_port));
    }
}

/* Append "name=addr (kind)" for one listener to buf at *n. */
static void add_listener(char *buf, size_t len, size_t *n, const char *name, int fd,
                         const char *configured, const char *kind)
{
    char a[INET6_ADDRSTRLEN + 16];
    if (fd < 0 || *n >= len) return;
    bound_addr(fd, configured, a, sizeof(a));
    *n += (size_t)snprintf(buf + *n, len - *n, "%s%s=%s (%s)", *n ? ", " : "", name, a, kind);
}

/* The line an operator (and a log search) looks for after a start: every
 * listener with its address and whether it is encrypted, and where the
 * admin token is (its path, never the token). */
static void log_ready(sv *s, int64_t now)
{
    const cy_config *cfg = s->cfg;
    bool tls = cfg->tls_cert[0] != '\0';
    char l[900];
    size_t n = 0;
    l[0] = '\0';
    add_listener(l, sizeof(l), &n, "mqtt", s->listen_fd, cfg->mqtt_listen, "plain");
    add_listener(l, sizeof(l), &n, "mqtts", s->mqtts_fd, cfg->mqtts_listen, "TLS");
    add_listener(l, sizeof(l), &n, "http", s->http_fd, cfg->http_listen,
                 tls && cfg->http_tls ? "TLS: API, MQTT over WebSocket at /mqtt"
                                      : "plain: API, MQTT over WebSocket at /mqtt");
    add_listener(l, sizeof(l), &n, "ops", s->ops_fd, cfg->ops_listen,
                 tls && cfg->ops_tls ? "TLS: metrics, status" : "plain: metrics, status");
    add_listener(l, sizeof(l), &n, "coap", s->coap_fd, cfg->coap_listen, "UDP, plain");
    add_listener(l, sizeof(l), &n, "coaps", s->coaps_fd ? s->coaps_fd[0] : -1, cfg->coaps_listen,
                 "UDP, DTLS");
    char dir[4096], token[4200];
    if (!realpath(cfg->data_dir, dir)) snprintf(dir, sizeof(dir), "%s", cfg->data_dir);
    snprintf(token, sizeof(token), "%s/admin-token", dir);
    bool have = access(token, F_OK) == 0;
    cy_info(NULL, "supervisor: ready in %.1f s: %u shard%s accepting; listeners: %s; %s %s%s",
            secs(now - s->started_ms), s->n, s->n == 1 ? "" : "s", n ? l : "none",
            have ? "admin token in" : "no admin token:", token,
            have ? "" : " was removed (`cyan token create` makes others)");
}

/* Whether every shard serves clients now: running and accepting. */
static unsigned serving(const sv *s)
{
    unsigned up = 0;
    for (unsigned i = 0; i < s->n; i++) {
        const cy_sb_slot *slot = &s->sb.slots[i];
        up += s->shards[i].child && cy_sb_load(&slot->state) == CY_SHARD_RUNNING &&
              cy_sb_load(&slot->accepting) == 1;
    }
    return up;
}

/* One line for `systemctl status`: how many shards serve, and why the
 * first one that does not is down. Holds no clock, so it changes only when
 * the node does. */
static void status_text(const sv *s, unsigned up, char *out, size_t len)
{
    size_t n = 0;
    if (!s->healthy)
        n += (size_t)snprintf(out, len, "NOT HEALTHY (watchdog not fed): %.150s; ",
                              s->unhealthy_why);
    if (n < len)
        n += (size_t)snprintf(out + n, len - n, "%s%u of %u shard%s serving",
                              s->ready ? "" : "starting: ", up, s->n, s->n == 1 ? "" : "s");
    for (unsigned i = 0; i < s->nproc && n < len; i++) {
        const shard *sh = &s->shards[i];
        const cy_sb_slot *slot = &s->sb.slots[i];
        bool down = !sh->child || cy_sb_load(&slot->state) == CY_SHARD_DOWN;
        if (sh->monitor && !down) continue;
        if (!down && cy_sb_load(&slot->state) == CY_SHARD_RUNNING) continue;
        if (!s->ready && !down) continue; /* starting: the count says it */
        char reason[sizeof(slot->sv_last_reason) + 1];
        memcpy(reason, slot->sv_last_reason, sizeof(slot->sv_last_reason));
        reason[sizeof(reason) - 1] = '\0';
        n += (size_t)snprintf(out + n, len - n, "; %s %s%s%s", sh->name,
                              down ? "down" : "restarting", reason[0] ? ": " : "", reason);
        break; /* the first is enough for a status line */
    }
}

/* Whether data_dir/run/scoreboard is still the file we made and map. */
static bool scoreboard_in_place(const sv *s)
{
    struct stat st;
    return stat(s->sb_path, &st) == 0 && st.st_dev == s->sb_dev && st.st_ino == s->sb_ino;
}

/* Judge ourselves (sdnotify.h): what the supervisor knows of each process. */
static bool judge_self(sv *s, int64_t now, char *why, size_t len)
{
    cy_sv_proc p[CY_SB_MAX_SHARDS + 1];
    for (unsigned i = 0; i < s->nproc; i++) {
        const shard *sh = &s->shards[i];
        p[i].name = sh->name;
        p[i].pid = sh->pid;
        p[i].alive = sh->child != NULL;
        p[i].killed_ms = sh->child ? sh->killed_ms : 0;
        p[i].respawn_armed = uv_is_active((const uv_handle_t *)&sh->respawn) != 0;
        p[i].spawn_failing_since_ms = sh->spawn_failing_since_ms;
    }
    return cy_supervisor_healthy(p, s->nproc, scoreboard_in_place(s), now, why, len);
}

/* Every tick: READY=1 once every shard serves, STATUS= when it changes,
 * and WATCHDOG=1 every half WatchdogSec while we judge ourselves healthy.
 * Sent from the tick that judges the shards, so a loop that stops turning
 * stops the pings; a loop that turns but no longer supervises (sdnotify.h)
 * stops them too. Health is judged and its changes logged also without
 * systemd. */
static void feed_systemd(sv *s, int64_t now)
{
    int64_t ping = cy_sdnotify_ping_ms(&s->sd);
    int64_t every = ping && ping < HEALTH_MS ? ping : HEALTH_MS;
    if (now - s->last_health_ms >= every) {
        char why[256];
        bool ok = judge_self(s, now, why, sizeof(why));
        if (ok && !s->healthy)
            cy_info(NULL, "supervisor: healthy again%s",
                    ping ? ": feeding systemd's watchdog" : "");
        else if (!ok && s->healthy)
            cy_error(NULL, "supervisor: not healthy: %s%s", why,
                     ping ? "; systemd's watchdog is no longer fed and will restart the node"
                          : "; restart the node");
        s->healthy = ok;
        snprintf(s->unhealthy_why, sizeof(s->unhealthy_why), "%s", why);
        s->last_health_ms = now;
    }
    unsigned up = serving(s);
    bool now_ready = !s->ready && up == s->n;
    if (now_ready) {
        s->ready = true;
        log_ready(s, now);
    }
    if (s->sd.fd < 0) return;
    char status[sizeof(s->status)], msg[sizeof(s->status) + 32];
    status_text(s, up, status, sizeof(status));
    if (now_ready || strcmp(status, s->status)) {
        snprintf(msg, sizeof(msg), "%sSTATUS=%s", now_ready ? "READY=1\n" : "", status);
        notify(s, msg);
        snprintf(s->status, sizeof(s->status), "%s", status);
    }
    if (ping && s->healthy && now - s->last_ping_ms >= ping) {
        notify(s, "WATCHDOG=1");
        s->last_ping_ms = now;
    }
}

/* ---- start ---- */

/* The address of setting `what` (text), or an error line. */
static int listen_addr(const char *what, const char *text, struct sockaddr_storage *ss)
{
    int rc = cy_listen_addr_parse(text, ss);
    if (rc) cy_error(NULL, "supervisor: %s %s: expected host:port or [v6]:port", what, text);
    return rc;
}

static int open_listener(const char *what, const char *text, int *out)
{
    struct sockaddr_storage ss;
    int rc = listen_addr(what, text, &ss);
    if (rc) return rc;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) goto fail;
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0) goto fail;
    socklen_t len =
        ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) goto fail;
    if (listen(fd, LISTEN_BACKLOG) != 0) goto fail;
    *out = fd;
    return 0;
fail:
    rc = -errno;
    /* Our own orphans were stopped before this (lock_data_dir): another
     * program has the port; say how to find it. */
    if (rc == -EADDRINUSE)
        cy_error(NULL,
                 "supervisor: cannot listen on %s (%s): %s: another process listens there "
                 "(`ss -ltnp` names it)",
                 text, what, strerror(errno));
    else
        cy_error(NULL, "supervisor: cannot listen on %s (%s): %s", text, what, strerror(errno));
    if (fd >= 0) close(fd);
    return rc;
}

/* A UDP socket bound to text (CoAP). reuseport: one of a SO_REUSEPORT
 * group, in which the kernel keeps each source address on one socket. */
static int open_udp(const char *what, const char *text, bool reuseport, int *out)
{
    struct sockaddr_storage ss;
    int rc = listen_addr(what, text, &ss);
    if (rc) return rc;
    int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) goto fail;
    int on = 1;
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0) goto fail;
    /* A burst of datagrams waits in the kernel while the loop is busy. */
    int rcvbuf = 4 << 20;
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    socklen_t len =
        ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) goto fail;
    *out = fd;
    return 0;
fail:
    rc = -errno;
    if (rc == -EADDRINUSE)
        cy_error(NULL,
                 "supervisor: cannot bind %s (%s): %s: another process uses that UDP port "
                 "(`ss -lunp` names it); set %s to another address, or empty to turn it off",
                 text, what, strerror(errno), what);
    else
        cy_error(NULL, "supervisor: cannot bind %s (%s): %s", text, what, strerror(errno));
    if (fd >= 0) close(fd);
    return rc;
}

static void close_udp(sv *s)
{
    if (s->coap_fd >= 0) close(s->coap_fd);
    s->coap_fd = -1;
    if (s->coaps_fd) {
        for (unsigned i = 0; i < s->n; i++)
            if (s->coaps_fd[i] >= 0) close(s->coaps_fd[i]);
        cy_free(s->coaps_fd);
        s->coaps_fd = NULL;
    }
}

/* The CoAP sockets: one plain socket, and one DTLS socket per shard. */
static int open_coap(sv *s, const cy_config *cfg)
{
    if (cfg->coap_listen[0] && open_udp("coap_listen", cfg->coap_listen, false, &s->coap_fd))
        return -1;
    if (!cfg->coaps_listen[0]) return 0;
    s->coaps_fd = cy_calloc(s->n, sizeof(int));
    if (!s->coaps_fd) return -1;
    for (unsigned i = 0; i < s->n; i++)
        s->coaps_fd[i] = -1;
    for (unsigned i = 0; i < s->n; i++)
        if (open_udp("coaps_listen", cfg->coaps_listen, true, &s->coaps_fd[i])) return -1;
    return 0;
}

/* A start that failed before the shards: close what was opened, free s,
 * exit status 1. */
static int start_failed(sv *s)
{
    close_udp(s);
    if (s->listen_fd >= 0) close(s->listen_fd);
    if (s->mqtts_fd >= 0) close(s->mqtts_fd);
    if (s->http_fd >= 0) close(s->http_fd);
    if (s->ops_fd >= 0) close(s->ops_fd);
    close(s->lock_fd);
    cy_free(s);
    return 1;
}

/* ---- the data folder's lock (see the file comment) ---- */

/* True if process pid has the file lk open: as its fd `fd`, or, with fd < 0,
 * as any fd. /proc/PID/fd/N follows to the open file itself, so this holds
 * even for a file renamed or unlinked since. A process we may not inspect
 * (another user's) reads as not holding it. */
static bool has_open(pid_t pid, int fd, const struct stat *lk)
{
    char path[64];
    struct stat st;
    if (pid <= 0) return false;
    if (fd >= 0) {
        snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)pid, fd);
        return stat(path, &st) == 0 && st.st_dev == lk->st_dev && st.st_ino == lk->st_ino;
    }
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d) return false;
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d)))
        if (e->d_name[0] >= '0' && e->d_name[0] <= '9') found = has_open(pid, atoi(e->d_name), lk);
    closedir(d);
    return found;
}

/* pid's parent and state letter from /proc/PID/stat ("pid (comm) S ppid");
 * false if it is gone. comm may hold spaces and parentheses: parse after
 * the last ')'. */
static bool proc_stat(pid_t pid, pid_t *ppid, char *state)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    int pp = 0;
    if (!p || sscanf(p + 1, " %c %d", state, &pp) != 2) return false;
    *ppid = (pid_t)pp;
    return true;
}

/* The slot index if pid's command line is `EXE shard INDEX ...` or `EXE
 * monitor INDEX ...` (a process of some run), else -1. */
static int shard_index(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    const char *a1 = memchr(buf, '\0', (size_t)n);
    if (!a1 || ++a1 >= buf + n || (strcmp(a1, "shard") && strcmp(a1, "monitor"))) return -1;
    const char *a2 = a1 + strlen(a1) + 1;
    if (a2 >= buf + n || *a2 < '0' || *a2 > '9') return -1;
    return atoi(a2);
}

static const char *state_words(char st)
{
    switch (st) {
    case 'T':
    case 't':
        return " (it is stopped: SIGCONT or SIGKILL it)";
    case 'D':
        return " (it is in uninterruptible sleep)";
    default:
        return "";
    }
}

typedef struct lock_scan {
    pid_t live; /* a live supervisor holding the lock, or 0 */
    char live_state;
    pid_t orphans[MAX_ORPHANS]; /* named and killed so far */
    int norphans;
    int present; /* orphans seen in this scan */
} lock_scan;

/* One pass over /proc: find who holds the lock file lk. A shard whose parent
 * also has the file open belongs to a live supervisor (that parent); a shard
 * whose parent does not is an orphan: SIGKILL (which ends it stopped or not)
 * and name it once. */
static void scan_holders(lock_scan *ls, const struct stat *lk, const char *data_dir, pid_t recorded)
{
    ls->present = 0;
    /* The supervisor the file names, if it is alive and holds the lock. */
    pid_t pp;
    char st;
    if (recorded > 0 && recorded != getpid() && proc_stat(recorded, &pp, &st) && st != 'Z' &&
        has_open(recorded, -1, lk)) {
        ls->live = recorded;
        ls->live_state = st;
        return;
    }
    DIR *d = opendir("/proc");
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid == getpid() || !has_open(pid, LOCK_FD, lk)) continue;
        int idx = shard_index(pid);
        if (idx < 0 || !proc_stat(pid, &pp, &st) || st == 'Z') continue;
        char pst;
        pid_t gp;
        if (pp != getpid() && proc_stat(pp, &gp, &pst) && pst != 'Z' && has_open(pp, -1, lk)) {
            ls->live = pp; /* its supervisor is alive: not an orphan */
            ls->live_state = pst;
            break;
        }
        ls->present++;
        bool named = false;
        for (int i = 0; i < ls->norphans; i++)
            named |= ls->orphans[i] == pid;
        kill(pid, SIGKILL);
        if (named) continue;
        if (ls->norphans < MAX_ORPHANS) ls->orphans[ls->norphans++] = pid;
        cy_warn(NULL,
                "supervisor: shard %d (pid %d) of a previous run on %s outlived its supervisor "
                "(pid %d, gone)%s; killing it (SIGKILL)",
                idx, (int)pid, data_dir, (int)recorded,
                st == 'T' || st == 't' ? " and is stopped" : "");
    }
    closedir(d);
}

static pid_t read_pid(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0) return 0;
    buf[n] = '\0';
    long v = strtol(buf, NULL, 10);
    return v > 0 && v < INT32_MAX ? (pid_t)v : 0;
}

/* Take data_dir/run/lock for this run: 0 and *out the fd (close-on-exec;
 * shards get it as fd 6), or 1 after logging why not. Orphaned shards of
 * this data folder are killed; a live supervisor makes it refuse. */
static int lock_data_dir(const char *run_dir, const char *data_dir, int *out)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/lock", run_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    struct stat lk;
    if (fd < 0 || fstat(fd, &lk) != 0) {
        cy_error(NULL, "supervisor: cannot open %s: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return 1;
    }
    lock_scan ls;
    memset(&ls, 0, sizeof(ls));
    int64_t until = cy_mono_ms() + LOCK_WAIT_MS;
    for (;;) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) break;
        if (errno != EWOULDBLOCK && errno != EINTR) {
            cy_error(NULL, "supervisor: cannot lock %s: %s", path, strerror(errno));
            goto fail;
        }
        scan_holders(&ls, &lk, data_dir, read_pid(fd));
        if (ls.live) {
            cy_error(NULL,
                     "supervisor: another cyan (supervisor pid %d) is running on %s%s; "
                     "stop it first",
                     (int)ls.live, data_dir, state_words(ls.live_state));
            goto fail;
        }
        if (cy_mono_ms() >= until) {
            if (ls.present)
                cy_error(NULL,
                         "supervisor: %d shard%s of a previous run on %s still hold %s %.0f s "
                         "after SIGKILL (pid %d%s)",
                         ls.present, ls.present == 1 ? "" : "s", data_dir, path, secs(LOCK_WAIT_MS),
                         (int)ls.orphans[0], ls.present > 1 ? " and others" : "");
            else
                cy_error(NULL,
                         "supervisor: %s is locked by a process that is neither a cyan "
                         "supervisor nor a shard of this data folder (`fuser -v %s` names it)",
                         path, path);
            goto fail;
        }
        struct timespec ts = {0, LOCK_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (ls.norphans)
        cy_info(NULL, "supervisor: %d orphaned shard%s of a previous run stopped", ls.norphans,
                ls.norphans == 1 ? "" : "s");
    /* For people and for the next start: who holds it. */
    char text[32];
    int n = snprintf(text, sizeof(text), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)n, 0) != n)
        cy_warn(NULL, "supervisor: cannot write my pid to %s: %s", path, strerror(errno));
    *out = fd;
    return 0;
fail:
    close(fd);
    return 1;
}

static void init_handle(sv *s, uv_handle_t *h)
{
    h->data = s;
}

/* Is the listener address text (host:port) this machine's loopback only? */
static bool loopback(const char *text)
{
    struct sockaddr_storage ss;
    if (cy_listen_addr_parse(text, &ss)) return false;
    if (ss.ss_family == AF_INET)
        return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    return ss.ss_family == AF_INET6 &&
           IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr);
}

/* Say once at start which plaintext listeners only this machine reaches
 * because of their defaults (loopback since issue 14, as Mosquitto 2.0
 * without a listener) and how to open them, and warn of those that take
 * plaintext from the network. */
static void tell_binds(const cy_config *cfg)
{
    cy_config *def = cy_malloc(sizeof(*def));
    if (!def) return;
    cy_config_defaults(def);
    static const char *const names[] = {"mqtt_listen", "http_listen", "ops_listen", "coap_listen"};
    const char *values[] = {cfg->mqtt_listen, cfg->http_listen, cfg->monitor ? cfg->ops_listen : "",
                            cfg->coap_listen};
    const char *defaults[] = {def->mqtt_listen, def->http_listen, def->ops_listen,
                              def->coap_listen};
    char local[200] = "", open[400] = "";
    size_t nl = 0, no = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!values[i][0]) continue;
        if (loopback(values[i])) {
            if (!strcmp(values[i], defaults[i]) && nl < sizeof(local))
                nl += (size_t)snprintf(local + nl, sizeof(local) - nl, "%s%s", nl ? ", " : "",
                                       names[i]);
        } else if (i != 0 || !cfg->tls_cert[0]) { /* plain MQTT beside TLS: the operator's choice */
            if (no < sizeof(open))
                no += (size_t)snprintf(open + no, sizeof(open) - no, "%s%s %s", no ? ", " : "",
                                       names[i], values[i]);
        }
    }
    cy_free(def);
    bool mqtt = strstr(local, "mqtt_listen") != NULL;
    if (mqtt && cfg->tls_cert[0] && cfg->mqtts_listen[0])
        cy_info(NULL,
                "supervisor: %s take%s connections from this machine only (the default); "
                "devices elsewhere use MQTT over TLS on mqtts_listen %s",
                local, strchr(local, ',') ? "" : "s", cfg->mqtts_listen);
    else if (mqtt)
        cy_info(NULL,
                "supervisor: %s take%s connections from this machine only (the default): "
                "devices elsewhere cannot connect. To open MQTT up, configure tls_cert and "
                "tls_key (devices then use mqtts_listen, 0.0.0.0:8883), or set mqtt_listen = "
                "0.0.0.0:1883 explicitly (docs/operations.md, \"TLS\")",
                local, strchr(local, ',') ? "" : "s");
    else if (nl)
        cy_info(NULL, "supervisor: %s take%s connections from this machine only (the default)",
                local, strchr(local, ',') ? "" : "s");
    if (no)
        cy_warn(NULL,
                "supervisor: plaintext listeners open to the network: %s; device secrets and "
                "API tokens cross it in the clear%s",
                open, cfg->tls_cert[0] ? "" : " (no tls_cert is configured)");
}

int cy_supervisor_check(const cy_config *cfg)
{
    if (cfg->tls_cert[0] || cfg->tls_key[0] || cfg->tls_ca[0]) {
        char err[300];
        cy_tls_options o;
        cy_tls_options_of(cfg, &o);
        if (cy_tls_check(&o, err, sizeof(err))) {
            cy_error(NULL, "supervisor: TLS (tls_cert, tls_key, tls_ca): %s; not starting", err);
            return 1;
        }
        if (!cfg->mqtts_listen[0])
            cy_warn(NULL, "supervisor: tls_cert is set but mqtts_listen is empty: no MQTT "
                          "over TLS");
        else if (cfg->preauth_memory / CY_TLS_HANDSHAKE_BYTES < 16)
            cy_warn(NULL,
                    "supervisor: preauth_memory %u leaves room for %u TLS handshakes at a "
                    "time per shard (%u bytes each)",
                    cfg->preauth_memory, cfg->preauth_memory / CY_TLS_HANDSHAKE_BYTES,
                    CY_TLS_HANDSHAKE_BYTES);
    }
    if (cfg->shards < 1 || cfg->shards > CY_SB_MAX_SHARDS) {
        cy_error(NULL, "supervisor: shards = %u: must be 1..%d", cfg->shards, CY_SB_MAX_SHARDS);
        return 1;
    }
    /* The bus between shards (several shards only) listens on
     * data_dir/run/shard-<index>.sock: a unix socket, whose path must fit
     * in sun_path. Found here, before anything starts, rather than by
     * every shard failing at start, forever. */
    size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
    char sock[700];
    int len = snprintf(sock, sizeof(sock), "%s/run/shard-%u.sock", cfg->data_dir,
                       cfg->shards - 1);
    if (cfg->shards > 1 && (len < 0 || (size_t)len > max)) {
        size_t room = strlen(cfg->data_dir) - ((size_t)len - max);
        cy_error(NULL,
                 "supervisor: data_dir is too long for %u shards: the bus socket %s is %d bytes "
                 "and a unix socket path may have at most %zu (sun_path); use a data_dir of at "
                 "most %zu bytes (or a relative one), or shards = 1",
                 cfg->shards, sock, len, max, room);
        return 1;
    }
    return 0;
}

int cy_supervisor_run(const cy_config *cfg, const char *exe, char *const *pass)
{
    char run_dir[600], path[640];
    cy_log_set_process("supervisor");
    if (cy_supervisor_check(cfg)) return 1;
    if (snprintf(run_dir, sizeof(run_dir), "%s/run", cfg->data_dir) >= (int)sizeof(run_dir)) {
        cy_error(NULL, "supervisor: data_dir too long");
        return 1;
    }
    snprintf(path, sizeof(path), "%s/scoreboard", run_dir);
    int rc = mkdir_p(run_dir);
    if (rc) {
        cy_error(NULL, "supervisor: cannot create %s: %s", run_dir, cy_strerror(rc));
        return 1;
    }
    int lock_fd = -1;
    if (lock_data_dir(run_dir, cfg->data_dir, &lock_fd)) return 1;

    sv *s = cy_calloc(1, sizeof(*s));
    if (!s) {
        cy_error(NULL, "supervisor: out of memory");
        close(lock_fd);
        return 1;
    }
    s->lock_fd = lock_fd;
    s->sd.fd = -1;
    s->healthy = true;
    s->started_ms = cy_mono_ms();
    snprintf(s->sb_path, sizeof(s->sb_path), "%s", path);
    s->live = *cfg;
    s->cfg = cfg = &s->live;
    s->exe = exe;
    s->pass = pass;
    while (pass && pass[s->npass])
        s->npass++;
    s->n = cfg->shards;
    s->listen_fd = -1;
    s->mqtts_fd = -1;
    s->http_fd = -1;
    s->ops_fd = -1;
    s->coap_fd = -1;
    s->nproc = s->n + (cfg->monitor ? 1 : 0);
    if (s->n < 1 || s->n > CY_SB_MAX_SHARDS) {
        cy_error(NULL, "supervisor: shards = %u: must be 1..%d", s->n, CY_SB_MAX_SHARDS);
        return start_failed(s);
    }
    if (open_listener("mqtt_listen", cfg->mqtt_listen, &s->listen_fd) ||
        (cfg->tls_cert[0] && cfg->mqtts_listen[0] &&
         open_listener("mqtts_listen", cfg->mqtts_listen, &s->mqtts_fd)) ||
        (cfg->http_listen[0] && open_listener("http_listen", cfg->http_listen, &s->http_fd)) ||
        (cfg->monitor && cfg->ops_listen[0] &&
         open_listener("ops_listen", cfg->ops_listen, &s->ops_fd)) ||
        open_coap(s, cfg))
        return start_failed(s);
    rc = cy_scoreboard_create(path, s->n, &s->sb);
    if (rc) {
        cy_error(NULL, "supervisor: cannot create %s: %s", path, cy_strerror(rc));
        return start_failed(s);
    }
    struct stat sbst;
    if (stat(path, &sbst) == 0) {
        s->sb_dev = sbst.st_dev;
        s->sb_ino = sbst.st_ino;
    }
    /* The node's table of failed logins and connection rates (core/cy_limit.h):
     * new at each start, so a restart forgets every count and lockout. */
    char lpath[640];
    snprintf(lpath, sizeof(lpath), "%s/limits", run_dir);
    rc = cy_limit_file_create(lpath);
    if (rc) {
        cy_error(NULL, "supervisor: cannot create %s: %s", lpath, cy_strerror(rc));
        return start_failed(s);
    }
    cy_sb_store(&s->sb.hdr->supervisor_pid, getpid());
    cy_sb_store(&s->sb.hdr->supervisor_heartbeat_ms, cy_mono_ms());
    cy_sb_store(&s->sb.hdr->watchdog_timeout_ms, cfg->watchdog_timeout);
    cy_sb_store(&s->sb.hdr->started_wall_ms, cy_wall_ms());
    snprintf(s->sb.hdr->version_text, sizeof(s->sb.hdr->version_text), "%s", CYAN_VERSION);
    snprintf(s->sb.hdr->commit, sizeof(s->sb.hdr->commit), "%s", cy_commit);
    {
        char text[136];
        snprintf(text, sizeof(text), "cyan %s (commit %.40s) started: %u shard%s", CYAN_VERSION,
                 cy_commit, s->n, s->n == 1 ? "" : "s");
        cy_scoreboard_event(&s->sb, cy_wall_ms(), CY_SB_EVENT_START, -1, getpid(), 0, -1, text);
    }

    /* Our children are not systemd's main process: they must not inherit
     * the notify socket nor the watchdog (cy_sdnotify_open clears both). */
    rc = cy_sdnotify_open(&s->sd);
    if (rc && rc != CY_ENOENT)
        cy_warn(NULL, "supervisor: NOTIFY_SOCKET %s: %s: systemd will not hear from cyan",
                s->sd.socket[0] ? s->sd.socket : "(unusable)", cy_strerror(rc));
    else if (!rc && s->sd.watchdog_ms)
        cy_info(NULL,
                "supervisor: under systemd (notify socket %s); its watchdog (%.1f s) is fed "
                "every %.1f s while the supervisor is healthy",
                s->sd.socket, secs(s->sd.watchdog_ms), secs(cy_sdnotify_ping_ms(&s->sd)));
    else if (!rc && s->sd.bad_watchdog)
        cy_warn(NULL,
                "supervisor: under systemd (notify socket %s), but WATCHDOG_USEC is not a "
                "positive number of microseconds: its watchdog is not fed, and if WatchdogSec= "
                "is set systemd will restart cyan when it runs out",
                s->sd.socket);
    else if (!rc)
        cy_info(NULL, "supervisor: under systemd (notify socket %s), no watchdog", s->sd.socket);

    rc = uv_loop_init(&s->loop);
    if (rc) {
        cy_error(NULL, "supervisor: loop: %s", uv_strerror(rc));
        s->result = 1;
        goto out_sb;
    }
    uv_timer_init(&s->loop, &s->tick);
    init_handle(s, (uv_handle_t *)&s->tick);
    uv_timer_init(&s->loop, &s->stop_timer);
    init_handle(s, (uv_handle_t *)&s->stop_timer);
    uv_signal_init(&s->loop, &s->sigterm);
    init_handle(s, (uv_handle_t *)&s->sigterm);
    uv_signal_init(&s->loop, &s->sigint);
    init_handle(s, (uv_handle_t *)&s->sigint);
    uv_signal_init(&s->loop, &s->sighup);
    init_handle(s, (uv_handle_t *)&s->sighup);
    uv_signal_init(&s->loop, &s->sigusr1);
    init_handle(s, (uv_handle_t *)&s->sigusr1);
    uv_signal_init(&s->loop, &s->sigusr2);
    init_handle(s, (uv_handle_t *)&s->sigusr2);
    for (unsigned i = 0; i < s->nproc; i++) {
        shard *sh = &s->shards[i];
        sh->sv = s;
        sh->idx = i;
        sh->monitor = i == s->n;
        if (sh->monitor)
            snprintf(sh->name, sizeof(sh->name), "monitor");
        else
            snprintf(sh->name, sizeof(sh->name), "shard %u", i);
        sh->killed_reason = -1;
        uv_timer_init(&s->loop, &sh->respawn);
        init_handle(s, (uv_handle_t *)&sh->respawn);
        sh->respawn.data = sh;
    }
    signal(SIGPIPE, SIG_IGN);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sighup, on_other_signal, SIGHUP);
    uv_signal_start(&s->sigusr1, on_other_signal, SIGUSR1);
    uv_signal_start(&s->sigusr2, on_other_signal, SIGUSR2);

    cy_info(NULL,
            "supervisor (pid %ld): %u shard%s, mqtt on %s%s%s, watchdog_timeout %u ms, "
            "scoreboard %s",
            (long)getpid(), s->n, s->n == 1 ? "" : "s", cfg->mqtt_listen,
            s->mqtts_fd >= 0 ? ", mqtts on " : "", s->mqtts_fd >= 0 ? cfg->mqtts_listen : "",
            cfg->watchdog_timeout, path);
    tell_binds(cfg);
    {
        char msg[64];
        snprintf(msg, sizeof(msg), "STATUS=starting %u shard%s", s->n, s->n == 1 ? "" : "s");
        notify(s, msg);
        snprintf(s->status, sizeof(s->status), "%s", msg + 7);
    }
    for (unsigned i = 0; i < s->nproc; i++)
        spawn_shard(&s->shards[i]);
    if (s->alive < s->nproc) {
        cy_error(NULL, "supervisor: could not start every shard; stopping");
        s->result = 1;
        begin_stop(s, "startup failed");
    } else {
        uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
    }

    uv_run(&s->loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&s->loop);
    if (rc) cy_error(NULL, "supervisor: loop close: %s", uv_strerror(rc));
    cy_info(NULL, "supervisor: stopped, exit status %d", s->result);

out_sb:
    for (unsigned i = 0; i < s->nproc; i++) {
        cy_sb_store(&s->sb.slots[i].state, CY_SHARD_DOWN);
        cy_sb_store(&s->sb.slots[i].sv_pid, 0);
    }
    cy_sb_store(&s->sb.hdr->supervisor_pid, 0);
    cy_scoreboard_close(&s->sb);
    close(s->listen_fd);
    if (s->mqtts_fd >= 0) close(s->mqtts_fd);
    if (s->http_fd >= 0) close(s->http_fd);
    if (s->ops_fd >= 0) close(s->ops_fd);
    close_udp(s);
    cy_sdnotify_close(&s->sd);
    int result = s->result;
    close(s->lock_fd);
    cy_free(s);
    return result;
}
