/* sdnotify: systemd's service notification protocol (sd_notify(3)), spoken
 * directly, and the supervisor's judgement of its own health, which decides
 * whether systemd's watchdog is fed.
 *
 * The protocol: one datagram per message to the unix socket named in
 * NOTIFY_SOCKET (a path, or an abstract name when it starts with '@'),
 * holding newline-separated assignments: READY=1, STATUS=<text>,
 * STOPPING=1, RELOADING=1 with MONOTONIC_USEC=<n>, WATCHDOG=1. systemd
 * enables its watchdog by setting WATCHDOG_USEC (WatchdogSec=) and
 * WATCHDOG_PID (the process that must ping; absent means the receiver of
 * the variable). Pinging at half of WATCHDOG_USEC is systemd's advice. It
 * takes ten lines of C, so cyan links no libsystemd: one dependency less
 * in a static build, and nothing of it is needed besides (no journal
 * fields, no socket activation).
 *
 * The environment is read once and the variables are removed from it
 * (cy_sdnotify_open): shards and the monitor are not systemd's main
 * process, must not notify, and must not think they have a watchdog.
 *
 * Health: the supervisor pings only from its own loop (a stopped or
 * spinning loop sends nothing), and only while cy_supervisor_healthy says
 * that it is still doing its job: every process it supervises is alive,
 * or down with a respawn scheduled (a crash loop is being handled: a
 * shard's fault must not restart the whole node); nothing it killed
 * outlived the kill for CY_SV_REAP_MS (its exits are seen); no process
 * has been impossible to spawn for CY_SV_SPAWN_FAIL_MS (file descriptors
 * exhausted, the binary gone); and data_dir/run/scoreboard is still the
 * file it maps (a new shard must open it: removed, every respawn would
 * fail forever). Each of these is fixed by what systemd does when the
 * pings stop: a new supervisor.
 *
 * Ownership: cy_sdnotify is the caller's storage; strings passed in are
 * borrowed. Errors: 0, CY_ENOENT (not under systemd), CY_EINVAL (an
 * address that does not fit sun_path), or -errno from socket/sendto.
 * Thread: the supervisor's main thread (cy_sdnotify_open changes the
 * environment); cy_supervisor_healthy is pure.
 */
#ifndef CY_SDNOTIFY_H
#define CY_SDNOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct cy_sdnotify {
    int fd;              /* datagram socket, -1 when not under systemd */
    char socket[108];    /* NOTIFY_SOCKET as given ("@name" for abstract), for logs */
    int64_t watchdog_ms; /* WatchdogSec (WATCHDOG_USEC / 1000), 0 = no watchdog */
    bool bad_watchdog;   /* WATCHDOG_USEC was set but is no positive number (for the log) */
} cy_sdnotify;

/* From the values of NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (each
 * may be NULL) for process self. No socket: n->fd -1, returns CY_ENOENT
 * (sends then do nothing). The watchdog is on when WATCHDOG_USEC is a
 * positive number and WATCHDOG_PID is absent or equals self. */
int cy_sdnotify_open_from(cy_sdnotify *n, const char *socket, const char *usec, const char *pid,
                          pid_t self);
/* The same from the environment, which it then clears of the three. */
int cy_sdnotify_open(cy_sdnotify *n);
/* Send one message (e.g. "READY=1\nSTATUS=ready"). CY_ENOENT when off. */
int cy_sdnotify_send(cy_sdnotify *n, const char *state);
/* How often to ping: half the watchdog interval, 0 = do not. */
int64_t cy_sdnotify_ping_ms(const cy_sdnotify *n);
void cy_sdnotify_close(cy_sdnotify *n);

/* One message to an explicit address (same syntax as NOTIFY_SOCKET), on a
 * socket made for it; NULL or "" is CY_ENOENT. cy_sd_notify sends to
 * getenv("NOTIFY_SOCKET"). Does not block. */
int cy_sd_notify_to(const char *socket, const char *state);
int cy_sd_notify(const char *state);

/* What the supervisor knows of one process it supervises (a shard or the
 * monitor) at one tick. Times are monotonic ms; 0 = never/not. */
typedef struct cy_sv_proc {
    const char *name;               /* "shard 2", "monitor" (borrowed) */
    int64_t pid;                    /* its pid while alive, for messages */
    bool alive;                     /* a child process exists (not reaped) */
    int64_t killed_ms;              /* when the supervisor sent it SIGKILL, if alive */
    bool respawn_armed;             /* down, and its respawn timer runs */
    int64_t spawn_failing_since_ms; /* first of the failed spawns in a row */
} cy_sv_proc;

#define CY_SV_REAP_MS 5000        /* a SIGKILLed child must be reaped within this */
#define CY_SV_SPAWN_FAIL_MS 60000 /* spawns may fail in a row for this long */

/* Whether the supervisor does its job (see the file comment): n processes,
 * scoreboard_ok = the scoreboard file is still in place. why (may be NULL)
 * receives the first reason it is not ("shard 2 (pid 4244) was killed 6.0
 * s ago and has not exited"), or "". */
bool cy_supervisor_healthy(const cy_sv_proc *p, unsigned n, bool scoreboard_ok, int64_t now_ms,
                           char *why, size_t why_len);

#endif
