/* statuspage: the status of each component, derived from the firing
 * alerts, and the renderers of GET /status (HTML without JavaScript),
 * /api/v2/summary.json, /api/v2/incidents.json (shaped like Atlassian
 * Statuspage's public API v2) and /api/v2/timeline.json (cyan's own).
 *
 * Components (ids of docs/operations.md): "mqtt" (MQTT device service),
 * "api" (HTTP API), "webhooks", "monitor", then "shard-0".."shard-N-1",
 * in that order (their position). Statuses, best first: operational,
 * degraded_performance, partial_outage, major_outage. Derivation, from the
 * alerts firing now (severity critical = outage, warning = degraded, info
 * = nothing):
 *
 *  - An alert about one shard (label shard="k", or component="shard-k"):
 *    shard-k is major_outage (critical) or degraded_performance (warning).
 *    If its component label is "api" or "webhooks" (a call canary failing
 *    on shard k), that component is also hit, at most partial_outage: it
 *    fails for that shard's devices only.
 *  - An alert about mqtt, api, webhooks or monitor without a shard: that
 *    component is major_outage (critical) or degraded_performance.
 *  - "mqtt" rolls its shards up: major_outage when every shard is in
 *    major_outage, partial_outage when some are, degraded_performance when
 *    none is but some are degraded.
 *  - "api" is partial_outage when some shard is in major_outage (calls to
 *    that shard's devices fail fast, see docs/architecture.md), and
 *    major_outage when every shard is (nothing serves the API); shards'
 *    warnings do not degrade it.
 *  - "webhooks" is degraded_performance when some shard is in major_outage
 *    (that shard's deliveries wait in its durable queue: late, not lost)
 *    and major_outage when every shard is.
 *  - "monitor" follows its own alerts only.
 *  Each component takes the worst of its own alerts and its roll-up. An
 *  alert naming no known component, or a shard the page does not have, is
 *  shown but changes no status.
 *  Incidents do not change statuses: alerts do.
 *
 * The page's indicator and description, as Statuspage words them:
 *   none      "All Systems Operational"      every component operational
 *   minor     "Partially Degraded Service"   the worst is degraded_performance
 *             ("Degraded System Service" when every component is)
 *   major     "Partial System Outage"        some component in partial or major
 *                                            outage, but mqtt and api are not down
 *   critical  "Major System Outage"          mqtt or api in major_outage: no device
 *                                            (or no application) is served
 *
 * The renderers are pure: they read a model (cy_status_model: borrowed
 * pointers the caller fills from what it holds: the components derived
 * here, the firing alerts, incidents and timeline events read from
 * statusdb) and append to a cy_buf; no I/O, no clock (the model's now_ms).
 * All text from the model is escaped: HTML entities in the page, JSON
 * escapes in JSON; bytes that are not UTF-8 are replaced (U+FFFD in JSON).
 * On failure (CY_ENOMEM) nothing is left appended to out. Thread: any; no
 * state.
 */
#ifndef CY_STATUS_STATUSPAGE_H
#define CY_STATUS_STATUSPAGE_H

#include "core/cy_buf.h"
#include "status/statusdb.h"

#include <stddef.h>
#include <stdint.h>

#define CY_STATUS_SHARDS_MAX 64
#define CY_STATUS_COMPONENTS_MAX (4 + CY_STATUS_SHARDS_MAX)

/* Component statuses, best first: the worse of two is the larger. */
enum {
    CY_COMPONENT_OPERATIONAL = 0,
    CY_COMPONENT_DEGRADED,       /* degraded_performance */
    CY_COMPONENT_PARTIAL_OUTAGE, /* partial_outage */
    CY_COMPONENT_MAJOR_OUTAGE,   /* major_outage */
    CY_COMPONENT_STATUSES
};

/* The page's indicator. */
enum {
    CY_INDICATOR_NONE = 0,
    CY_INDICATOR_MINOR,
    CY_INDICATOR_MAJOR,
    CY_INDICATOR_CRITICAL,
    CY_INDICATORS
};

/* Statuspage's word ("partial_outage"), a label for people ("Partial
 * outage"), and the indicator's word ("major"); "?" out of range. */
const char *cy_component_status_name(int status);
const char *cy_component_status_label(int status);
const char *cy_status_indicator_name(int indicator);

typedef struct cy_status_component {
    char id[CY_STATUS_ID_MAX + 1]; /* "mqtt", "shard-2" */
    char name[48];                 /* "MQTT device service", "Shard 2" */
    char description[112];
    int status;         /* CY_COMPONENT_* */
    int64_t updated_ms; /* wall-clock ms of its last change of status */
    int position;       /* 1, 2, ... (page order) */
} cy_status_component;

/* Every component of the page with its status, and the page's indicator.
 * The caller's storage (about 14 KiB), kept from one derivation to the
 * next so that updated_ms tells when a status last changed. */
typedef struct cy_status_components {
    cy_status_component v[CY_STATUS_COMPONENTS_MAX];
    size_t n;
    int shards;
    int indicator;           /* CY_INDICATOR_* */
    const char *description; /* static: "All Systems Operational", ... */
} cy_status_components;

/* The page's components for `shards` shards (1..CY_STATUS_SHARDS_MAX), all
 * operational since now_ms. Returns 0 or CY_EINVAL. */
int cy_status_components_init(cy_status_components *c, int shards, int64_t now_ms);

/* Derive every status and the indicator from the alerts firing now
 * (alerts[0..n), borrowed; their severity, component and shard are read),
 * as described above. A status that changes gets updated_ms = now_ms. */
void cy_status_derive(cy_status_components *c, const cy_status_alert *alerts, size_t n,
                      int64_t now_ms);

/* The component with this id, or NULL: for the operator's POST, whose
 * component must be one of the page's. */
const cy_status_component *cy_status_component_find(const cy_status_components *c, const char *id);

/* What a page shows. Every pointer is borrowed for the call. */
typedef struct cy_status_page {
    const char *id;      /* page id in JSON (e.g. the node's name); NULL: "cyan" */
    const char *name;    /* title; NULL: "cyan" */
    const char *url;     /* public URL of /status for links; NULL: "/status" */
    const char *version; /* of the cyan serving it, for the footer; NULL: none */
    const char *commit;
    int64_t created_ms;       /* components' created_at (e.g. the first start recorded); 0: now */
    int64_t now_ms;           /* the time the page is rendered for */
    int refresh_s;            /* HTML <meta http-equiv="refresh">; 0: none */
    int64_t timeline_span_ms; /* HTML time axis: at most this far back; 0: 24 h */
} cy_status_page;

typedef struct cy_status_model {
    cy_status_page page;
    const cy_status_components *components;
    const cy_status_alert *alerts; /* firing now */
    size_t nalerts;
    /* Unresolved and recent incidents (cy_statusdb_incident_list); summary.json
     * shows the unresolved ones, incidents.json all of them. */
    const cy_incident *incidents;
    size_t nincidents;
    /* Timeline, newest first (cy_statusdb_timeline_list: the newest 50, say). */
    const cy_timeline_event *events;
    size_t nevents;
} cy_status_model;

/* GET /status: text/html; charset=utf-8. A banner with the indicator, the
 * components (each shard on its own line), the alerts firing with their
 * evidence, the unresolved incidents with their updates and the resolved
 * ones folded (<details>), and the timeline: a time axis (inline SVG, one
 * lane per kind of event; deploys drawn as lines across every lane, alert
 * spans as bars, a <title> on each mark) over the last hour, stretched
 * back to the newest deploy of the model's events and to the start of
 * every alert firing and incident open, but never past timeline_span_ms;
 * then every event of the model as a table, deploys highlighted (events
 * older than the axis are only there). Small inline CSS; no script.
 * Returns 0, CY_EINVAL (NULL model, out or components), CY_ENOMEM. */
int cy_status_render_html(const cy_status_model *m, cy_buf *out);

/* GET /api/v2/summary.json: {page, status{indicator, description},
 * components[], incidents[] (unresolved), scheduled_maintenances[]}. */
int cy_status_render_summary(const cy_status_model *m, cy_buf *out);

/* GET /api/v2/incidents.json: {page, incidents[]} with every incident of
 * the model, each with its incident_updates[] (newest first) and
 * components[]. */
int cy_status_render_incidents(const cy_status_model *m, cy_buf *out);

/* GET /api/v2/timeline.json (cyan's own): {page, events[{id, time, kind,
 * component (null: none), text, details (object or null)}]}, newest first. */
int cy_status_render_timeline(const cy_status_model *m, cy_buf *out);

/* Append s (NULL: nothing) with & < > " ' as HTML entities, control
 * characters but newline and tab dropped, and bytes that are not UTF-8
 * replaced by U+FFFD. Returns 0 or CY_ENOMEM. */
int cy_status_html_escape(cy_buf *out, const char *s);

#endif
