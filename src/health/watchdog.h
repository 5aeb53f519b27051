/* watchdog: the supervisor's decisions as pure functions (systemd's notify
 * protocol is in sdnotify.h, included here). supervisor.c is the only
 * production caller; they are exported so unit tests can drive every
 * verdict and edge without processes or clocks.
 *
 * The judgement of one shard (cy_watchdog_judge), sampled every 100 ms:
 *   - DOWN or STOPPING: OK (exits are the supervisor's exit callback's
 *     business, and a shard asked to stop is not judged);
 *   - STARTING: OK until START_TIMEOUT, max(10 s, 5 x timeout) after the
 *     spawn; the heartbeat is not judged while a shard loads its state;
 *   - RUNNING, heartbeat older than timeout (strictly): HUNG;
 *   - RUNNING, work owed to it (backlog > 0) and its progress counter
 *     unchanged for longer than timeout: STUCK. The clock of "unchanged"
 *     starts at the sample where progress last moved or where work was
 *     first seen owed, whichever is later: an idle shard that is handed
 *     work is given the full timeout from then, not judged by how long it
 *     was idle before. Sampling can only make a verdict late, never early.
 * Exactly at the timeout is still OK; one millisecond later is not.
 *
 * Work owed (the backlog, cy_scoreboard_backlog): the bus frames peers
 * sent to the shard and it has not acknowledged, plus the shard's own
 * `queued`, which the shard sums every cy_watchdog_owed_interval from its
 * layers (shard.c): client sockets holding input it does not read and
 * should (and its listening socket's accept queue), QoS 1/2 messages
 * its connected devices have window for, held acknowledgements that may
 * go, device calls and requests past their deadline, durable frames for
 * live peers the bus would take. Each is work that only this shard can do
 * and that a healthy shard does within a pass or a tick; work that waits
 * for a client, a device or a peer is not owed. An idle shard owes 0. See
 * docs/supervision.md, "What a shard owes".
 *
 * Thread: any; no shared state.
 */
#ifndef CY_WATCHDOG_H
#define CY_WATCHDOG_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <signal.h>
#include <sys/socket.h>

#include "health/scoreboard.h"
#include "health/sdnotify.h"

typedef enum {
    CY_VERDICT_OK = 0,
    CY_VERDICT_HUNG,          /* no heartbeat for timeout: counted as CY_RESTART_HUNG */
    CY_VERDICT_STUCK,         /* work owed, no progress: CY_RESTART_STUCK */
    CY_VERDICT_START_TIMEOUT, /* never got to RUNNING: counted as CY_RESTART_HUNG */
    CY_VERDICT_CANARY,        /* its canary failed for canary_timeout: CY_RESTART_CANARY
                                 (given by the supervisor from the monitor's findings,
                                 never by cy_watchdog_judge) */
} cy_verdict;

/* What the supervisor read from one slot at one sample. */
typedef struct cy_watch_sample {
    int64_t state;        /* CY_SHARD_* */
    int64_t heartbeat_ms; /* monotonic ms of the shard's last loop pass */
    uint64_t progress;    /* the slot's progress counter */
    uint64_t backlog;     /* cy_scoreboard_backlog() for the shard */
} cy_watch_sample;

/* The supervisor's memory of one shard between samples (caller's storage). */
typedef struct cy_watch {
    int64_t spawned_ms; /* monotonic ms of the spawn (STARTING deadline) */
    uint64_t progress;  /* progress at the previous sample */
    uint64_t backlog;   /* backlog at the previous sample (0: nothing was owed) */
    int64_t since_ms;   /* monotonic ms since when work is owed and progress has not moved */
} cy_watch;

#define CY_WATCHDOG_START_MIN_MS 10000 /* STARTING grace: at least this, */
#define CY_WATCHDOG_START_FACTOR 5     /* or this many timeouts */

/* Reset w for a process spawned at now_ms. */
void cy_watch_init(cy_watch *w, int64_t now_ms);
/* Judge one sample and update w (progress and its clock). Deterministic;
 * calling it twice with the same sample and now changes nothing more.
 * why (may be NULL) receives the reason for a verdict other than OK, e.g.
 * "no heartbeat for 2.1 s", "no progress for 2.1 s with 530 queued",
 * "still starting after 10.0 s"; it is set to "" for OK. */
cy_verdict cy_watchdog_judge(cy_watch *w, const cy_watch_sample *s, int64_t now_ms,
                             int64_t timeout_ms, char *why, size_t why_len);
/* How long a shard may stay STARTING: max(10 s, 5 x timeout_ms). */
int64_t cy_watchdog_start_limit(int64_t timeout_ms);
/* How often a shard sums its owed work into its slot's `queued`:
 * min(CY_WATCHDOG_OWED_MAX_MS, timeout_ms / 8), at least
 * CY_WATCHDOG_OWED_MIN_MS. An eighth of the timeout keeps the verdict
 * (first owed sample + timeout) within 1.125 x timeout plus the 100 ms
 * sampling after work stops moving; the cap keeps `cyan status` current
 * with long timeouts. A count costs microseconds on a healthy shard
 * (docs/supervision.md), so counting this often is cheap. */
#define CY_WATCHDOG_OWED_MAX_MS 250
#define CY_WATCHDOG_OWED_MIN_MS 10
int64_t cy_watchdog_owed_interval(int64_t timeout_ms);
/* Which restart reason (CY_RESTART_*) a verdict counts as. */
int cy_watchdog_reason(cy_verdict v);

/* The canary's verdict on a running shard (the supervisor asks only when
 * the monitor is healthy: running, heartbeat fresh, up for a timeout).
 * True when the shard's canary has not succeeded for longer than
 * timeout_ms, counted from the later of its last success (ok_ms, 0 none)
 * and the moment the shard started running (running_since_ms; 0: not
 * running, never failing), unless every one of nshards > 1 shards is
 * failing (nfailing == nshards): that points at the monitor or the path
 * all canaries share, and restarting every shard would turn a monitoring
 * fault into an outage. timeout_ms <= 0: canaries off, never failing.
 * why (may be NULL) receives "canary failing for 3.1 s" or "canary never
 * succeeded in 3.1 s". */
bool cy_canary_failing(int64_t now_ms, int64_t timeout_ms, int64_t running_since_ms,
                       int64_t ok_ms, unsigned nshards, unsigned nfailing, char *why,
                       size_t why_len);

/* Crash-loop backoff. A shard that ran less than CY_BACKOFF_SHORT_RUN_MS
 * waits clamp(prev x 2, 250 ms, 30 s) before its next spawn; one that ran
 * longer is respawned at once (prev unchanged). Once a shard has been
 * RUNNING for CY_BACKOFF_RESET_MS, the supervisor resets prev to 0. */
#define CY_BACKOFF_MIN_MS 250
#define CY_BACKOFF_MAX_MS 30000
#define CY_BACKOFF_SHORT_RUN_MS 5000
#define CY_BACKOFF_RESET_MS 30000
/* The delay before the next spawn, given the previous delay (0 if none)
 * and how long the process ran (spawn to exit). */
int64_t cy_backoff_next(int64_t prev_ms, int64_t ran_ms);

/* Parse "host:port" (IPv4 numbers, "*" for any IPv4 address) or
 * "[v6 address]:port" into addr. No name lookup. 0 or CY_EINVAL. */
int cy_listen_addr_parse(const char *text, struct sockaddr_storage *addr);

/* Whether the supervisor named in the scoreboard's header is alive: its pid
 * is non-zero and exists (kill(pid, 0)). *beat_age_ms (may be NULL) receives
 * the age of its heartbeat. */
bool cy_watchdog_supervisor_alive(const cy_scoreboard *sb, int64_t *beat_age_ms);

/* Drills (`cyan shard spin|stall INDEX`, status.c) reach a shard as the
 * realtime signal CY_DRILL_SIGNAL sent with sigqueue(3) and a value made by
 * cy_drill_token: which drill, for which generation of the shard. A shard
 * acts only on that signal, sent with sigqueue (si_code SI_QUEUE), whose
 * value names a known drill and its own generation; anything else is
 * ignored. Why not SIGUSR1/SIGUSR2 (as before): those are what log-rotation
 * tools send, and a drill must never fire by accident in production; no
 * such tool sends a realtime signal, let alone with this value. See
 * docs/supervision.md. */
#define CY_DRILL_SIGNAL (SIGRTMIN + 3)
enum { CY_DRILL_NONE = 0, CY_DRILL_SPIN = 1, CY_DRILL_STALL = 2, CY_DRILL_DROP = 3 };
/* The value (sigval.sival_int) for drill kind at this generation. */
int cy_drill_token(int64_t generation, int kind);
/* The drill a received value asks for, or CY_DRILL_NONE if it is not a
 * drill for this generation. Async-signal-safe (pure). */
int cy_drill_kind(int value, int64_t generation);

#endif
