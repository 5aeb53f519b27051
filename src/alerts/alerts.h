/* alerts: the monitor's alert rules and the engine that evaluates them over
 * snapshots (sample.h), and the Alertmanager webhook body for a group of
 * alerts. Pure: no clock (every call takes `now_ms`, wall-clock ms), no
 * I/O (except cy_alert_rules_load, which reads one file), no logging: the
 * caller logs, notifies (notify.h) and opens incidents from what
 * cy_alerts_eval reports.
 *
 * A rule applies to every series of its metric whose labels match its
 * selector (cy_labels_match); each matching label set is one alert instance
 * with its own state (so one alert per shard), unless the rule sums (sum=yes):
 * then all matching series are added into one instance labelled with the
 * selector. Kinds, and when their condition is true:
 *
 *   threshold  value OP limit                         (cyan_shard_backlog > 10000)
 *   increase   increase over `window` OP limit        (restarts in the last 5 min > 0)
 *              counter semantics: a drop is a reset, the new value is the increase;
 *              the window is kept as 32 points, so the resolution is window/32.
 *   staleness  value unchanged for more than max_age, only while the guard series
 *              (same labels) is non-zero; the clock starts when the value last
 *              changed or when the guard became non-zero, whichever is later
 *              (as the supervisor judges "stuck": an idle shard is never stale).
 *   absence    no increase for more than max_age (with an optional guard, same
 *              clock rule as staleness); a first sight counts as a change.
 *   flow       the input increased within `window` while the output (same labels)
 *              did not change for that whole window (input moving, output still);
 *              optional guard. An output series that is missing makes it false.
 *   heartbeat  always true (Alertmanager's Watchdog: an outside monitor pages
 *              when this alert stops arriving).
 *
 * A guard that a rule names but the snapshot lacks makes the condition false.
 * "When a series last changed" is the sample's changed_ms when known (> 0),
 * else the engine's own record (the evaluation at which it saw the value move).
 *
 * States: inactive -> pending (condition true, `for` not yet elapsed) ->
 * firing -> resolved (condition false again). An alert fires at the first
 * evaluation where it has been true for at least `for` (exactly `for`
 * fires, as in Prometheus; for=0 fires at the first true evaluation). A
 * pending alert whose condition turns false goes back to inactive without a
 * transition. A firing alert whose series disappears from the snapshot
 * resolves (evidence says so). Resolved alerts are kept in a bounded
 * "recently resolved" list (count and age; the oldest goes first).
 *
 * Bounds: CY_ALERTS_MAX_RULES rules (the parser refuses more), max_instances
 * alert instances (a new instance past it is not tracked and counted in
 * instances_refused at every evaluation: raise the bound; existing instances
 * keep working; room freed by a series that disappeared is used from the
 * next evaluation on),
 * resolved_max / resolved_keep_ms for the history.
 *
 * Alert labels: the series' labels (a sum rule: its selector's), then
 * alertname, severity and component (these three override a series label of
 * the same name); shard comes from the series. Canonical form as sample.h
 * (sorted, quoted). component "shard" in a rule means "shard-<shard label>"
 * ("mqtt" when the series has no shard label). Fingerprint: FNV-1a 64 of the
 * sorted labels as Prometheus computes a label set's fingerprint
 * (name, 0xff, value, 0xff, ...), printed as 16 hex digits.
 *
 * Summary templates: {{shard}}, {{value}}, {{alertname}}, {{component}},
 * {{severity}}, {{labels.NAME}} (empty when absent). The parser refuses any
 * other {{...}}.
 *
 * Rules file (setting alert_rules; empty = the defaults only). One rule per
 * line, '#' starts a comment, blank lines ignored; SERIES is `name` or
 * `name{label="value",...}` (the braces are the selector):
 *
 *   alert NAME threshold SERIES OP NUMBER        [options]   OP: > >= < <= == !=
 *   alert NAME increase  SERIES OP NUMBER window=DUR [options]
 *   alert NAME staleness SERIES max_age=DUR [while=GUARD] [options]
 *   alert NAME absence   SERIES max_age=DUR [while=GUARD] [options]
 *   alert NAME flow      INPUT OUTPUT window=DUR [while=GUARD] [options]
 *   alert NAME heartbeat [options]
 *   disable NAME
 *
 *   options: for=DUR (default 0) severity=critical|warning|info (default
 *   warning) component=shard|<literal> (default shard) summary="text"
 *   sum=yes|no (default no)
 *   DUR: 0, or an integer with a unit: 500ms 2s 1m 1h
 *   values: bare, or "double quoted" with \" and \\ escapes.
 *
 * Example:
 *   # page when a shard's backlog stays high
 *   alert CyanShardBacklogHigh threshold cyan_shard_backlog > 10000 for=30s
 *   alert CyanShard0Quiet absence cyan_publish_received_total{shard="0"} max_age=1m
 *   disable CyanMessageFlowStopped
 *
 * A rule named like one already in the set (a default) replaces it; the same
 * name twice in one file is an error; `disable` of a name not in the set is an
 * error (a typo must not silently keep a rule). Errors name file and line:
 * "alerts.conf:7: unknown kind 'treshold'".
 *
 * Ownership: rule sets are plain values in the caller's storage (about
 * 50 KB: allocate them); the engine copies the rules it is given. Alerts
 * returned by the engine are borrowed, valid until the next eval, set_rules
 * or free. Errors: CY_ENOMEM, CY_EINVAL, CY_ECONFIG (parse), CY_EIO (load).
 * Thread: one thread per engine / rule set (the monitor's loop).
 */
#ifndef CY_ALERTS_ALERTS_H
#define CY_ALERTS_ALERTS_H

#include "alerts/sample.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CY_ALERT_NAME_MAX 64      /* rule name, with the NUL */
#define CY_ALERT_COMPONENT_MAX 48 /* "shard-12", "mqtt" */
#define CY_ALERT_TEXT_MAX 256     /* summary template and rendered summary */
#define CY_ALERT_EVIDENCE_MAX 512
#define CY_ALERT_LABELS_MAX 384 /* canonical labels of an alert */
#define CY_ALERTS_MAX_RULES 64
#define CY_ALERTS_MAX_INSTANCES 1024                /* default max_instances */
#define CY_ALERTS_RESOLVED_MAX 64                   /* default resolved_max */
#define CY_ALERTS_RESOLVED_KEEP_MS (15 * 60 * 1000) /* default resolved_keep_ms */

typedef enum {
    CY_ALERT_THRESHOLD = 0,
    CY_ALERT_INCREASE,
    CY_ALERT_STALENESS,
    CY_ALERT_ABSENCE,
    CY_ALERT_FLOW,
    CY_ALERT_HEARTBEAT,
} cy_alert_kind;

typedef enum {
    CY_ALERT_GT = 0,
    CY_ALERT_GE,
    CY_ALERT_LT,
    CY_ALERT_LE,
    CY_ALERT_EQ,
    CY_ALERT_NE
} cy_alert_op;

typedef enum { CY_ALERT_CRITICAL = 0, CY_ALERT_WARNING, CY_ALERT_INFO } cy_alert_severity;

typedef enum {
    CY_ALERT_INACTIVE = 0,
    CY_ALERT_PENDING,
    CY_ALERT_FIRING,
    CY_ALERT_RESOLVED,
} cy_alert_state;

typedef struct cy_alert_rule {
    char name[CY_ALERT_NAME_MAX];        /* alertname: [A-Za-z_][A-Za-z0-9_]* */
    int kind;                            /* cy_alert_kind */
    char metric[CY_SAMPLE_NAME_MAX];     /* the series (flow: the input) */
    char selector[CY_SAMPLE_LABELS_MAX]; /* canonical label set the series must carry, "" = any */
    char output[CY_SAMPLE_NAME_MAX];     /* flow: the output series */
    char guard[CY_SAMPLE_NAME_MAX]; /* staleness/absence/flow: only while non-zero; "" = none */
    int op;                         /* threshold, increase: cy_alert_op */
    double limit;                   /* threshold, increase */
    int64_t window_ms;              /* increase, flow */
    int64_t max_age_ms;             /* staleness, absence */
    int64_t for_ms;                 /* pending this long before firing */
    bool sum;                       /* one instance over the sum of every matching series */
    int severity;                   /* cy_alert_severity */
    char component[CY_ALERT_COMPONENT_MAX]; /* literal, or "shard" = shard-<shard label> */
    char summary[CY_ALERT_TEXT_MAX];        /* template */
} cy_alert_rule;

typedef struct cy_alert_rules {
    size_t n;
    cy_alert_rule v[CY_ALERTS_MAX_RULES];
} cy_alert_rules;

/* What the built-in rules take from the configuration (ms; 0 = default). */
typedef struct cy_alert_params {
    int64_t watchdog_timeout_ms; /* watchdog_timeout, default 2000 */
    int64_t canary_timeout_ms;   /* canary_timeout, default 3000 */
    int64_t canary_interval_ms;  /* time between canary rounds, default 1000 */
} cy_alert_params;

/* Replace r with the built-in rules (p NULL = all defaults):
 *   CyanShardDown            cyan_shard_up == 0 for max(5 s, 2.5 x watchdog)    critical shard
 *   CyanShardHeartbeatStale  cyan_shard_heartbeat_age_seconds > T, for 0, where
 *                            T = watchdog/2 within [250 ms, 1 s] (the loop stopped:
 *                            SIGSTOP, spin, blocked; fires before the supervisor's kill)
 *                                                                               critical shard
 *   CyanShardNoProgress      staleness of cyan_shard_progress_total for more than T
 *                            while cyan_shard_backlog (a stall: loop turns, work not done)
 *                                                                               critical shard
 *   CyanShardRestarting      increase(cyan_shard_restarts_total[1m]) > 0         warning shard
 *   CyanCanaryFailing        absence of cyan_canary_success_total increase for
 *                            canary_timeout + canary_interval                   critical shard
 *   CyanMessageFlowStopped   flow, summed over shards: cyan_publish_received_total rose
 *                            within 10 s while cyan_publish_sent_total stood still,
 *                            while cyan_subscriptions > 0, for 20 s             warning mqtt
 *   CyanMessagesDropped      increase(cyan_messages_dropped_total[1m]) > 0      warning mqtt
 *   CyanSupervisorStale      cyan_supervisor_heartbeat_age_seconds > 2 for 0    critical monitor
 *   CyanWatchdog             heartbeat                                          info monitor
 * With the default watchdog (2 s) a SIGSTOPped, spinning or stalled shard is
 * named by HeartbeatStale or NoProgress 1-2 s after it stops (evaluating
 * every second), and by Restarting once the supervisor replaced it (~3 s). */
void cy_alert_rules_defaults(cy_alert_rules *r, const cy_alert_params *p);
/* Apply the rules text `text` (format above) on top of r: add, replace,
 * disable. All or nothing: on error r is unchanged and err holds
 * "<file>:<line>: <why>" (file may be NULL: "rules"). Returns 0, CY_ECONFIG
 * or CY_ENOMEM. */
int cy_alert_rules_parse(cy_alert_rules *r, const char *text, const char *file, char *err,
                         size_t errlen);
/* cy_alert_rules_parse of the file at path (read here: the one I/O of this
 * module). Errors as parse, and CY_EIO when the file cannot be read. */
int cy_alert_rules_load(cy_alert_rules *r, const char *path, char *err, size_t errlen);
/* The rule named name, or NULL. */
const cy_alert_rule *cy_alert_rules_find(const cy_alert_rules *r, const char *name);

/* One alert instance as the world sees it. */
typedef struct cy_alert {
    char name[CY_ALERT_NAME_MAX];           /* alertname */
    char labels[CY_ALERT_LABELS_MAX];       /* canonical, with alertname, severity, component */
    char component[CY_ALERT_COMPONENT_MAX]; /* "shard-2", "mqtt" */
    char shard[16];                         /* shard label, "" = none */
    int severity;                           /* cy_alert_severity */
    int state;                              /* cy_alert_state: PENDING, FIRING, RESOLVED */
    double value;                           /* the value the rule compared (last evaluation) */
    char summary[CY_ALERT_TEXT_MAX];
    char evidence[CY_ALERT_EVIDENCE_MAX]; /* series{labels} = v since <RFC 3339> ... */
    int64_t active_ms;                    /* wall ms: condition true since (pending began) */
    int64_t starts_at_ms;                 /* wall ms: firing since; 0 while pending */
    int64_t ends_at_ms;                   /* wall ms: resolved at; 0 until resolved */
    uint64_t fingerprint;                 /* FNV-1a 64 of labels (Prometheus' way) */
} cy_alert;

typedef struct cy_alerts cy_alerts;

typedef struct cy_alerts_limits {
    size_t max_instances;     /* 0 = CY_ALERTS_MAX_INSTANCES */
    size_t resolved_max;      /* 0 = CY_ALERTS_RESOLVED_MAX */
    int64_t resolved_keep_ms; /* 0 = CY_ALERTS_RESOLVED_KEEP_MS */
} cy_alerts_limits;

typedef struct cy_alerts_stats {
    size_t rules, instances, pending, firing, resolved; /* now */
    uint64_t instances_refused; /* cumulative: new instances past max_instances */
    uint64_t evaluations;
} cy_alerts_stats;

/* An engine over a copy of rules (borrowed, copied); lim NULL = defaults.
 * Returns 0 and *out (caller frees with cy_alerts_free), CY_ENOMEM. */
int cy_alerts_new(cy_alerts **out, const cy_alert_rules *rules, const cy_alerts_limits *lim);
/* Safe on NULL. */
void cy_alerts_free(cy_alerts *e);
/* Replace the rules (a reload). Instances of a rule whose definition is the
 * same (same name, same fields) keep their state; firing instances of a rule
 * removed or changed resolve, and are reported with the next evaluation's
 * transitions. Returns 0 or CY_ENOMEM (nothing changed). */
int cy_alerts_set_rules(cy_alerts *e, const cy_alert_rules *rules);
/* Evaluate every rule over s (borrowed) at now_ms (wall clock; a now_ms
 * earlier than the previous evaluation's, a clock step back, is taken as
 * that one). Returns 0, or CY_ENOMEM when a new instance could
 * not be allocated (it is skipped and counted as refused; the rest of the
 * evaluation is complete and consistent). */
int cy_alerts_eval(cy_alerts *e, const cy_snapshot *s, int64_t now_ms);
/* What the last evaluation changed: alerts that became FIRING and alerts
 * that became RESOLVED (state says which), in rule order. Borrowed. */
const cy_alert *cy_alerts_transitions(const cy_alerts *e, size_t *n);
/* Pending and firing alerts after the last evaluation, firing first, then by
 * severity, name, labels. Borrowed. */
const cy_alert *cy_alerts_active(const cy_alerts *e, size_t *n);
/* Recently resolved alerts, oldest first. Borrowed. */
const cy_alert *cy_alerts_resolved(const cy_alerts *e, size_t *n);
void cy_alerts_stats_get(const cy_alerts *e, cy_alerts_stats *st);

/* Text helpers (also for the status page and logs). */
const char *cy_alert_severity_name(int severity); /* "critical", "warning", "info" */
const char *cy_alert_state_name(int state);       /* "inactive", "pending", "firing", "resolved" */
/* RFC 3339 UTC with ms ("2026-12-04T10:02:03.120Z") into out (>= 25 bytes). */
void cy_alert_time(int64_t wall_ms, char *out, size_t len);
/* Walk a canonical label set: *pos starts at 0; returns true and the
 * unescaped name and value of the next label, false at the end. */
bool cy_alert_labels_next(const char *labels, size_t *pos, char *name, size_t nlen, char *value,
                          size_t vlen);

/* Alertmanager webhook body (version 4) for one group of alerts.
 *   alerts[0..n): FIRING or RESOLVED alerts (PENDING ones are skipped);
 *   status "firing" when any is firing, else "resolved"; endsAt of a firing
 *   alert is "0001-01-01T00:00:00Z" as Alertmanager sends it.
 *   groupLabels: the labels named in group_by whose value all alerts share;
 *   groupKey "{}:{name=\"value\", ...}" of those; commonLabels and
 *   commonAnnotations: what every alert has with the same value.
 *   max_alerts > 0 keeps the first max_alerts and counts the rest in
 *   truncatedAlerts. Annotations: summary and evidence. */
typedef struct cy_alerts_webhook_opts {
    const char *receiver;        /* "cyan" when NULL */
    const char *external_url;    /* the monitor's URL, "" when NULL */
    const char *generator_url;   /* every alert's generatorURL, "" when NULL */
    const char *const *group_by; /* label names, may be NULL */
    size_t n_group_by;
    size_t max_alerts; /* 0 = no limit */
} cy_alerts_webhook_opts;

/* Returns 0 and *out, a NUL-terminated JSON text of *len bytes (caller frees
 * with cy_free), or CY_ENOMEM, CY_EINVAL (n == 0 or nothing firing/resolved). */
int cy_alerts_webhook_json(const cy_alert *const *alerts, size_t n, const cy_alerts_webhook_opts *o,
                           char **out, size_t *len);

#endif
