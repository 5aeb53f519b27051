/* statusdb: the monitor's durable record of incidents and of the timeline,
 * one SQLite file (data_dir/monitor.db, WAL) that the monitor process alone
 * writes.
 *
 * The timeline is one time axis of what happened to the node: process
 * starts with their version and commit (a start whose version or commit
 * differs from the previous one is also a deploy), restarts with their
 * reason, alerts firing and resolving, incidents opened, updated and
 * resolved, and operators' notes. A responder reads it to see whether a
 * hang began before or after a deploy. It is bounded: events older than
 * timeline_keep_ms, and all but the newest timeline_keep events, are
 * deleted every trim_every appends (and at open).
 *
 * Incidents follow Statuspage's model: a name, a status (investigating,
 * identified, monitoring, resolved), an impact (none, minor, major,
 * critical), the components affected, and updates (status + body), newest
 * first. They are opened two ways:
 *
 *  - By an alert (cy_statusdb_alert_fired). The file keeps the set of
 *    alerts firing, keyed by fingerprint, so a call for an alert already
 *    firing changes nothing (a monitor that restarts and sees the same
 *    alerts again opens no second incident and writes no second event).
 *    An alert of severity critical or warning opens an incident named after
 *    its summary, status investigating, impact major (critical) or minor
 *    (warning), whose first update carries the summary and the evidence.
 *    Grouping: an alert whose component (cy_status_alert_component: the
 *    shard when it names one, else its component label) already has an
 *    unresolved incident that one of its firing alerts opened or joined
 *    joins that incident instead: it is added to it, the impact rises to
 *    the worst of them, and an update with the incident's current status
 *    says what else fired. So a hung shard whose heartbeat, progress and
 *    canary alerts fire within seconds is one incident; two shards are two.
 *    Incidents an operator opened are never joined (no alert of theirs
 *    fires) and so are resolved only by an operator. Alerts of severity
 *    info only go on the timeline.
 *  - By an operator (cy_statusdb_incident_create: POST /v1/incidents).
 *
 * An alert that resolves (cy_statusdb_alert_resolved) leaves the firing
 * set; if it belonged to an unresolved incident and was the last of its
 * alerts still firing, the incident is resolved with an automatic update
 * saying what cleared, when, and how long it lasted; otherwise an update
 * with the current status says it cleared and how many still fire.
 * Operators add updates (cy_statusdb_incident_update: POST
 * /v1/incidents/{id}/updates); status resolved resolves the incident; an
 * update with another status on a resolved incident reopens it. Every
 * change to an incident also appends its timeline event, in the same
 * transaction. Resolved incidents older than incident_keep_ms are deleted
 * with the timeline's trim; ids are never reused.
 *
 * Input is validated before anything is written: text must be UTF-8
 * without control characters (bodies, evidence and summaries may hold
 * newlines and tabs), within the lengths below; words (statuses, impacts,
 * kinds, severities) must be known; component ids are 1..31 bytes of
 * [a-z0-9-] (whether the page has such a component is the caller's check:
 * cy_status_component_known). Bad input: CY_EINVAL, nothing written.
 *
 * Errors: every write is one transaction (BEGIN IMMEDIATE ... COMMIT): on
 * failure it is rolled back and the file is as before. A full disk
 * (SQLITE_FULL, an I/O error with ENOSPC or EDQUOT, or the file reaching
 * max_bytes) is CY_ENOSPC; a lock another process holds past busy_ms is
 * CY_EBUSY; any other SQLite failure CY_ESTORE; CY_ENOMEM. Reads keep
 * working on a full disk. This module does not log failures of calls (it
 * logs only at open, through store/db.h): the caller logs once, with
 * cy_statusdb_errmsg, and goes on serving the page from what it holds in
 * memory (alerts and component statuses do not come from this file). A
 * failed cy_statusdb_alert_fired leaves the alert out of the firing set,
 * so the caller may call it again later (after the disk has room) and the
 * incident opens then.
 *
 * Durability: synchronous=NORMAL in WAL mode: a crash of the process loses
 * nothing committed; a power cut may lose the last commits.
 *
 * Times are wall-clock ms (CLOCK_REALTIME), given by the caller.
 *
 * Ownership: the handle owns the connection; lists and incidents returned
 * are the caller's, freed with their _fini. Strings passed in are borrowed
 * (copied into the file). Thread: the handle's owner (the monitor's loop);
 * other processes may open the file to read.
 */
#ifndef CY_STATUS_STATUSDB_H
#define CY_STATUS_STATUSDB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The file's name in data_dir. */
#define CY_STATUSDB_FILE "monitor.db"

/* Lengths in bytes, without the NUL. */
#define CY_STATUS_ID_MAX 31         /* component id: "mqtt", "shard-63" */
#define CY_STATUS_NAME_MAX 255      /* incident name */
#define CY_STATUS_BODY_MAX 8192     /* incident update body */
#define CY_STATUS_TEXT_MAX 1024     /* timeline text, alert summary */
#define CY_STATUS_EVIDENCE_MAX 4096 /* alert evidence */
#define CY_STATUS_DETAILS_MAX 8192  /* timeline details (a JSON object) */
#define CY_STATUS_FP_MAX 255        /* alert fingerprint */
#define CY_STATUS_ALERTNAME_MAX 127 /* alertname */
#define CY_STATUS_VERSION_MAX 63    /* version, commit */
#define CY_STATUS_COMPONENTS_PER_INCIDENT 8
#define CY_STATUSDB_LIST_MAX 1000 /* most rows one list returns */

/* Timeline event kinds; cy_timeline_kind_name gives the word. */
enum {
    CY_TL_DEPLOY = 0,        /* "deploy": a start with a new version or commit */
    CY_TL_START,             /* "start" */
    CY_TL_RESTART,           /* "restart": a process replaced, with its reason */
    CY_TL_ALERT_FIRING,      /* "alert_firing" */
    CY_TL_ALERT_RESOLVED,    /* "alert_resolved" */
    CY_TL_INCIDENT_OPENED,   /* "incident_opened" */
    CY_TL_INCIDENT_UPDATE,   /* "incident_update" */
    CY_TL_INCIDENT_RESOLVED, /* "incident_resolved" */
    CY_TL_NOTE,              /* "note" */
    CY_TL_KINDS
};

/* Incident statuses, in Statuspage's words and order. */
enum {
    CY_INCIDENT_INVESTIGATING = 0,
    CY_INCIDENT_IDENTIFIED,
    CY_INCIDENT_MONITORING,
    CY_INCIDENT_RESOLVED,
    CY_INCIDENT_STATUSES
};

/* Incident impacts, in Statuspage's words, worst last. */
enum { CY_IMPACT_NONE = 0, CY_IMPACT_MINOR, CY_IMPACT_MAJOR, CY_IMPACT_CRITICAL, CY_IMPACTS };

/* Words of the enums above (static storage; "?" when out of range) and
 * their parsers (the value, or CY_EINVAL for an unknown word or NULL). */
const char *cy_timeline_kind_name(int kind);
int cy_timeline_kind_parse(const char *word);
const char *cy_incident_status_name(int status);
int cy_incident_status_parse(const char *word);
const char *cy_incident_impact_name(int impact);
int cy_incident_impact_parse(const char *word);

/* Time as RFC 3339 UTC with milliseconds, "2026-11-24T03:08:20.123Z"
 * (negative: the epoch), and a duration in words for people, "45 s",
 * "3 min 12 s", "2 h 5 min", "3 d 4 h". */
#define CY_STATUS_TIME_LEN 32
void cy_status_rfc3339(int64_t ms, char out[CY_STATUS_TIME_LEN]);
void cy_status_duration(int64_t ms, char out[CY_STATUS_TIME_LEN]);

/* Whether id is a well-formed component id: 1..CY_STATUS_ID_MAX bytes of
 * [a-z0-9-]. */
bool cy_status_id_valid(const char *id);

/* An alert as the monitor's engine reports it: its labels and annotations.
 * Every pointer is borrowed; NULL reads as "". */
typedef struct cy_status_alert {
    const char *fingerprint; /* identity of the alert (its rule and labels), 1..255 bytes */
    const char *alertname;   /* 1..127 bytes */
    const char *severity;    /* "critical", "warning" or "info" */
    const char *component;   /* label component: "mqtt", "api", "webhooks", "monitor", "shard-2" */
    const char *shard;       /* label shard: "2", or "" when not about one shard */
    const char *summary;     /* one line, 0..1024 bytes */
    const char *evidence;    /* 0..4096 bytes: the series and values that made it fire */
    int64_t since_ms;        /* wall-clock ms it began firing */
} cy_status_alert;

/* The component an alert is about, into out: "shard-<shard>" when it has a
 * shard label (digits only), else its component label. Returns 0, or
 * CY_EINVAL when that is not a well-formed component id. */
int cy_status_alert_component(const cy_status_alert *a, char out[CY_STATUS_ID_MAX + 1]);

/* ---- types returned by reads ---- */

typedef struct cy_timeline_event {
    int64_t id;                           /* grows with each append */
    int64_t time_ms;                      /* wall-clock ms */
    int kind;                             /* CY_TL_* */
    char component[CY_STATUS_ID_MAX + 1]; /* "" when about no one component */
    char *text;                           /* owned */
    char *details;                        /* owned: a JSON object's text, or NULL */
} cy_timeline_event;

typedef struct cy_timeline_list {
    cy_timeline_event *v; /* owned */
    size_t n;
} cy_timeline_list;

void cy_timeline_list_fini(cy_timeline_list *l); /* safe on a zeroed list */

typedef struct cy_incident_update {
    int64_t id;
    int64_t incident_id;
    int status; /* CY_INCIDENT_* */
    char *body; /* owned */
    int64_t created_ms;
} cy_incident_update;

/* An alert that opened or joined an incident. */
typedef struct cy_incident_alert {
    char fingerprint[CY_STATUS_FP_MAX + 1];
    char alertname[CY_STATUS_ALERTNAME_MAX + 1];
    int64_t since_ms;   /* began firing */
    int64_t cleared_ms; /* resolved, 0 while firing */
} cy_incident_alert;

typedef struct cy_incident {
    int64_t id;
    char *name; /* owned */
    int status; /* CY_INCIDENT_* */
    int impact; /* CY_IMPACT_* */
    char components[CY_STATUS_COMPONENTS_PER_INCIDENT][CY_STATUS_ID_MAX + 1];
    size_t ncomponents;
    int64_t started_ms; /* when the trouble began: the first alert's since, or created */
    int64_t created_ms;
    int64_t updated_ms;          /* last update */
    int64_t monitoring_ms;       /* first update with status monitoring, 0 = none */
    int64_t resolved_ms;         /* 0 while unresolved */
    cy_incident_update *updates; /* owned, newest first */
    size_t nupdates;
    cy_incident_alert *alerts; /* owned, in the order they joined */
    size_t nalerts;
} cy_incident;

void cy_incident_fini(cy_incident *inc); /* safe on a zeroed incident */

typedef struct cy_incident_list {
    cy_incident *v; /* owned */
    size_t n;
} cy_incident_list;

void cy_incident_list_fini(cy_incident_list *l); /* safe on a zeroed list */

/* ---- open / close ---- */

typedef struct cy_statusdb_opts {
    int64_t timeline_keep_ms; /* events older than this are trimmed; 0 = 30 days */
    uint32_t timeline_keep;   /* at most this many events are kept; 0 = 100,000 */
    uint32_t trim_every;      /* trim after this many appends; 0 = 256 */
    int64_t incident_keep_ms; /* resolved incidents older than this are trimmed; 0 = 90 days */
    uint64_t max_bytes;       /* the file grows no larger (then CY_ENOSPC); 0 = 256 MiB */
    unsigned busy_ms;         /* wait this long for another process's lock; 0 = 200 */
} cy_statusdb_opts;

typedef struct cy_statusdb cy_statusdb;

/* Open or create the file at path (data_dir/CY_STATUSDB_FILE), then trim
 * what is older than the options keep, as of now_ms (a trim that fails for
 * a full disk or a lock is left to the next append: the handle still
 * reads). opts may be NULL for the defaults. On success *out is the
 * handle, closed with cy_statusdb_close. Errors: CY_EINVAL (NULL path or
 * out), CY_ENOMEM, CY_ESTORE (logged by store/db.h with the file's name:
 * a file that cannot be created or read, a newer schema). */
int cy_statusdb_open(const char *path, const cy_statusdb_opts *opts, int64_t now_ms,
                     cy_statusdb **out);
void cy_statusdb_close(cy_statusdb *db); /* NULL: nothing */

/* SQLite's message for the last failed call (empty if none): for the
 * caller's log line. Valid until the next call on the handle. */
const char *cy_statusdb_errmsg(const cy_statusdb *db);

/* ---- timeline ---- */

/* Append an event: kind CY_TL_*, component "" or NULL for none (else a
 * well-formed id), text 1..CY_STATUS_TEXT_MAX bytes (one line or several),
 * details NULL or a JSON object's text (at most CY_STATUS_DETAILS_MAX
 * bytes, kept as given). *id (may be NULL) gets the event's id. */
int cy_statusdb_timeline_append(cy_statusdb *db, int kind, const char *component, const char *text,
                                const char *details, int64_t time_ms, int64_t *id);

/* Record that the node (component "" or NULL) or a process (a component
 * id) started at started_ms, running version and commit (1..63 bytes of
 * printable ASCII each): a "start" event, preceded by a "deploy" event when
 * version or commit differs from those of the last start recorded for the
 * same component (the first one recorded is a deploy too). A call with the
 * same component and started_ms as the last one recorded does nothing (a
 * monitor that restarts records the node's start once). *deploy (may be
 * NULL) tells whether a deploy was recorded. */
int cy_statusdb_record_start(cy_statusdb *db, const char *component, const char *version,
                             const char *commit, int64_t started_ms, bool *deploy);

/* Events newest first (by time, then id) with time >= since_ms, at most
 * limit (1..CY_STATUSDB_LIST_MAX). *out is filled (zero it or not: it is
 * overwritten); free it with cy_timeline_list_fini. */
int cy_statusdb_timeline_list(cy_statusdb *db, int64_t since_ms, size_t limit,
                              cy_timeline_list *out);

/* ---- alerts ---- */

/* What an alert call did. */
enum {
    CY_ALERT_ACT_NOTHING = 0, /* already firing (fired), not firing (resolved), or info only */
    CY_ALERT_ACT_OPENED,      /* opened a new incident */
    CY_ALERT_ACT_JOINED,      /* joined an unresolved incident of its component */
    CY_ALERT_ACT_CLEARED,     /* left its incident, which is still open (other alerts fire, or
                             an operator resolved it before) */
    CY_ALERT_ACT_RESOLVED,    /* resolved its incident: it was the last of its alerts */
};

/* The alert a began firing at a->since_ms; now_ms is the time of the
 * writes. Records it in the firing set and on the timeline, and for a
 * critical or warning alert opens or joins an incident (see above).
 * *incident_id (may be NULL) gets the incident's id (0 if none), *action
 * (may be NULL) a CY_ALERT_*. Errors: CY_EINVAL (empty fingerprint or
 * alertname, unknown severity, no well-formed component, text too long or
 * not UTF-8), and those of any write. */
int cy_statusdb_alert_fired(cy_statusdb *db, const cy_status_alert *a, int64_t now_ms,
                            int64_t *incident_id, int *action);

/* The alert with a's fingerprint stopped firing at now_ms (only the
 * fingerprint is read: the firing set has the rest). An alert not firing:
 * CY_ALERT_ACT_NOTHING, nothing written. */
int cy_statusdb_alert_resolved(cy_statusdb *db, const cy_status_alert *a, int64_t now_ms,
                               int64_t *incident_id, int *action);

/* Resolve, as above, every alert of the firing set whose fingerprint is
 * not one of firing[0..n): for a monitor that restarts and has evaluated
 * its rules long enough (their `for` durations) to know what still fires.
 * *resolved (may be NULL) gets how many were resolved. Stops at the first
 * failure (the alerts resolved before it stay resolved). */
int cy_statusdb_alert_reconcile(cy_statusdb *db, const cy_status_alert *firing, size_t n,
                                int64_t now_ms, size_t *resolved);

/* ---- incidents ---- */

/* Open an incident by hand (POST /v1/incidents): name 1..255 bytes, one
 * line; component NULL/"" (none) or a well-formed id; status CY_INCIDENT_*
 * (resolved opens it resolved: a record after the fact); impact
 * CY_IMPACT_* (a request that does not say: CY_IMPACT_MINOR); body
 * 1..CY_STATUS_BODY_MAX bytes, the first update. *id (may be NULL) gets
 * the incident's id. */
int cy_statusdb_incident_create(cy_statusdb *db, const char *name, const char *component,
                                int status, int impact, const char *body, int64_t now_ms,
                                int64_t *id);

/* Add an update to incident id (POST /v1/incidents/{id}/updates): status
 * CY_INCIDENT_* becomes the incident's; resolved resolves it; another
 * status on a resolved incident reopens it. body 1..CY_STATUS_BODY_MAX
 * bytes. *update_id may be NULL. CY_ENOENT: no such incident. */
int cy_statusdb_incident_update(cy_statusdb *db, int64_t id, int status, const char *body,
                                int64_t now_ms, int64_t *update_id);

/* Incident id with its updates and alerts into *out (overwritten; free with
 * cy_incident_fini). CY_ENOENT: no such incident. */
int cy_statusdb_incident_get(cy_statusdb *db, int64_t id, cy_incident *out);

/* Incidents with their updates: the unresolved ones first, then (unless
 * unresolved_only) the resolved ones, each group newest first (by
 * creation), at most limit (1..CY_STATUSDB_LIST_MAX) in all. *out is
 * overwritten; free it with cy_incident_list_fini. */
int cy_statusdb_incident_list(cy_statusdb *db, bool unresolved_only, size_t limit,
                              cy_incident_list *out);

#endif
