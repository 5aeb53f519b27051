/* monitor: the process that watches the node from outside its shards.
 *
 * `cyan monitor INDEX GENERATION`, spawned by the supervisor like a shard
 * (its scoreboard slot is the one after the shards', INDEX = shards) and
 * replaced like one when it dies or its heartbeat stops. It never routes a
 * message: it reads the scoreboard, walks the real path with canaries
 * (canary.h) as a device and an application would, evaluates alert rules
 * over what it sees (alerts.h), keeps incidents and the timeline
 * (statusdb.h), and serves all of it on the operations listener, which the
 * supervisor opened (ops_listen) and hands over as fd 3:
 *   GET  /metrics                      Prometheus text format 0.0.4
 *   GET  /status                       the status page (HTML, no JavaScript)
 *   GET  /api/v2/summary.json          Statuspage-shaped summary
 *   GET  /api/v2/incidents.json        incidents, newest first
 *   GET  /api/v2/timeline.json         deploys, restarts, alerts, incidents
 *   GET  /v1/alerts                    active and recently resolved alerts (token)
 *   POST /v1/incidents                 open an incident by hand (full token)
 *   POST /v1/incidents/{id}/updates    add an update to one (full token)
 *   GET  /-/healthy                    200 "ok" while the monitor's loop runs
 * /metrics, /status and /api/v2/... need no token unless ops_public is false.
 *
 * Why a process of its own: the supervisor serves nothing, so nothing can
 * wedge the one process that replaces hung shards; a shard's hang cannot
 * block the monitor, which is how a hung shard's figures are still served
 * (marked stale); and a fault in the monitor (a slow alert receiver, a
 * bug) costs the node its monitoring, alerted on by the heartbeat rule,
 * never its devices.
 *
 * The monitor writes into the scoreboard only its own slot and the
 * header's monitor section (canary_timeout_ms, canary_ok_ms per shard: the
 * supervisor replaces a shard whose canary keeps failing).
 *
 * Thread: the process's main thread. Returns a process exit status: 0 on
 * SIGTERM/SIGINT or the supervisor's death (EOF on fd 4), 1 on a startup
 * error (logged).
 */
#ifndef CY_MONITOR_H
#define CY_MONITOR_H

#include "core/cy_buf.h"
#include "core/cy_config.h"
#include "alerts/sample.h"

#include <stdint.h>

int cy_monitor_run(const cy_config *cfg, unsigned index, uint64_t generation);

/* Settings of the monitor a node must not start with, found before it
 * starts: an alert_rules file that cannot be read or has an error (logged
 * with its file and line). 0 or 1. */
int cy_monitor_check(const cy_config *cfg);

/* The Prometheus text exposition (format 0.0.4) of a snapshot: samples of
 * one name are grouped under one `# HELP` and `# TYPE` (the order of first
 * appearance is kept), help(name) gives the help line (NULL: the name).
 * Values print as integers when they are, else with 15 significant digits;
 * NaN and infinities as Prometheus spells them. Errors: CY_ENOMEM. */
int cy_monitor_prometheus(cy_buf *out, const cy_snapshot *s, const char *(*help)(const char *name));

#endif
