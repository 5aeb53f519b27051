/* supervisor: process 0. Spawns the shards, judges them by progress,
 * replaces the ones that die or stop moving. Does no protocol work.
 *
 * What it does, in order:
 *   1. creates data_dir/run/ (mode 0700) and takes the data folder's lock,
 *      data_dir/run/lock (an exclusive flock; the file holds the
 *      supervisor's pid). If the lock is held: by a live supervisor, it
 *      refuses to start and logs that pid; by shards whose supervisor is
 *      gone (orphans), it logs each pid, SIGKILLs them and waits up to 5 s
 *      for the lock. Then it creates the scoreboard file
 *      data_dir/run/scoreboard (see scoreboard.h), the listening MQTT socket
 *      (mqtt_listen) and the listening HTTP socket (http_listen, unless
 *      empty);
 *   2. spawns `shards` shard processes with uv_spawn:
 *        argv: exe "shard" <index> <generation> <pass-through args without
 *              "-c FILE"> and every setting as --name=value (the
 *              supervisor's current settings, reloads included)
 *        fd 3: the listening TCP socket (bound, listening; shards accept on it)
 *        fd 4: one end of a socketpair to the supervisor; a shard exits
 *              when it reads EOF there (the supervisor is gone)
 *        fd 5: the listening HTTP socket, or /dev/null when the API is off
 *        fd 6: the data folder's lock file, the supervisor's own open file
 *              (so the lock stays held while any process of the run lives);
 *              a shard keeps it open and never touches it
 *        fds 7, 8: CoAP's sockets; fd 9: the MQTT over TLS listener
 *              (mqtts_listen, when tls_cert is set; its files are checked
 *              at start, cy_supervisor_check, and on SIGHUP)
 *        fd 0: /dev/null; fds 1, 2: inherited (one log stream)
 *      A shard also asks for SIGKILL at the supervisor's death
 *      (PR_SET_PDEATHSIG), so none outlives it, stopped or not.
 *      The generation is a number that grows with every spawn of that index.
 *   3. every 100 ms judges each shard from its scoreboard slot:
 *        - exited: respawn at once, or with backoff if it ran less than 5 s
 *          (crash loop: 250 ms doubling up to 30 s; reset after it stays up);
 *        - RUNNING and heartbeat older than watchdog_timeout: SIGKILL,
 *          reason "no heartbeat for 2.1 s";
 *        - RUNNING, work queued for it (cy_scoreboard_backlog > 0) and its
 *          progress counter unchanged for watchdog_timeout: SIGKILL, reason
 *          "no progress for 2.1 s with 530 queued";
 *        - STARTING longer than max(10 s, 5 x watchdog_timeout): SIGKILL.
 *      Every restart is logged with its reason and counted by reason in the
 *      slot (sv_restarts, sv_last_reason).
 *   4. says when the node is ready: once every shard is RUNNING and
 *      accepting clients, one info line with every listener (address,
 *      plain or TLS) and where the admin token is; under systemd
 *      (NOTIFY_SOCKET, sdnotify.h) READY=1 then, STATUS= lines as shards
 *      come and go, RELOADING=1/READY=1 around a reload, STOPPING=1 on
 *      shutdown, and WATCHDOG=1 every half WatchdogSec from the tick that
 *      judges the shards, only while it judges itself healthy (every
 *      process alive or its respawn scheduled, kills reaped, spawns
 *      possible, the scoreboard in place: cy_supervisor_healthy). A loss of
 *      health is logged at error, its end at info, with or without systemd.
 *   5. on SIGTERM/SIGINT: SIGTERM to every shard, waits up to 10 s (then
 *      SIGKILL), returns 0 if every shard exited with status 0, else 1.
 *   6. on SIGHUP: reloads. Re-reads the settings from pass as at start
 *      (the -c file, the --name=value on top); a file with an error, or
 *      settings the reload check refuses (an acl_file that does not parse,
 *      cy_supervisor_set_reload_check), changes nothing (one error line). Otherwise it applies the settings that can
 *      change at runtime (cy_config_reloadable), logs each other change as
 *      not applied, and sends the runtime settings to every shard over its
 *      fd 4 ("name=value" lines, then an empty line); each shard applies
 *      them and logs what changed. No shard is restarted. SIGUSR1 and
 *      SIGUSR2 (log rotation habits) are ignored, logged once.
 *
 * Thread: main thread, own libuv loop. Errors: returns a process exit
 * status; startup failures are logged (settings the run cannot work with,
 * see cy_supervisor_check; data folder in use, cannot listen, cannot
 * create run dir).
 */
#ifndef CY_SUPERVISOR_H
#define CY_SUPERVISOR_H

#include "core/cy_config.h"

/* Run until told to stop. exe: the binary to spawn (normally
 * /proc/self/exe resolved); pass: NULL-terminated arguments appended to
 * every shard's argv (the -c file and --name=value overrides, so shards see
 * the same settings). Borrowed. */
int cy_supervisor_run(const cy_config *cfg, const char *exe, char *const *pass);

/* A check of what the settings name that this layer cannot read itself
 * (the ACL file, which the device layer parses): 0, or non-zero with why
 * in err. */
typedef int (*cy_supervisor_check_fn)(const cy_config *cfg, char *err, size_t errlen);
/* Run fn on the settings each SIGHUP re-reads, before anything of them is
 * applied: a failure refuses the reload as a config file with an error
 * does (one error line, nothing changes, the shards are not told). NULL: no
 * check. Call it before cy_supervisor_run; process-wide. */
void cy_supervisor_set_reload_check(cy_supervisor_check_fn fn);

/* Settings a run cannot start with, found before anything is created or
 * spawned: shards outside 1..CY_SB_MAX_SHARDS, or a data_dir so long that
 * the bus sockets (data_dir/run/shard-N.sock, several shards only) exceed
 * a unix socket path's 107 bytes. 0, or 1 after logging why. */
int cy_supervisor_check(const cy_config *cfg);

/* `cyan status`: print the scoreboard of the node whose data_dir is in cfg
 * (one line per shard: index, pid, state, heartbeat age, progress, backlog,
 * connections, restarts by reason, last reason). Returns 0, or 1 if no
 * supervisor is running there. */
int cy_status_print(const cy_config *cfg);
/* `cyan status --json`: the same as one JSON object on stdout: "running",
 * "supervisor_pid", "supervisor_heartbeat_age_ms", "watchdog_timeout_ms",
 * "nshards", "shards" (per shard: "shard", "state", "pid", "generation",
 * "heartbeat_age_ms", "progress", "backlog", "connections", "restarts"
 * {reason: n}, "last_restart_reason", "metrics" {name: value},
 * "histograms" {name: {"count", "sum_seconds", "buckets" {le: cumulative},
 * "last_observed_ms_ago"}}), "totals_shards" and "totals" {name: value}
 * over the RUNNING shards. Returns as cy_status_print. */
int cy_status_json(const cy_config *cfg);

/* Drills: `cyan shard stop|cont|kill|spin|stall INDEX`: sends the shard
 * SIGSTOP, SIGCONT, SIGKILL, or the drill signal CY_DRILL_SIGNAL with the
 * value for spin (its loop busy-loops forever) or stall (it stops handling
 * input but keeps its heartbeat) and its generation (watchdog.h), and
 * prints the pid. Returns a process exit status. */
int cy_shard_drill(const cy_config *cfg, const char *what, const char *index);

#endif
