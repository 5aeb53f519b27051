/* statuspage: component statuses and the page's renderers; see statuspage.h. */
#include "status/statuspage.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIN_MS 60000LL
#define HOUR_MS (60 * MIN_MS)

/* ---- words ---- */

static const char *const comp_names[CY_COMPONENT_STATUSES] = {"operational", "degraded_performance",
                                                              "partial_outage", "major_outage"};
static const char *const comp_labels[CY_COMPONENT_STATUSES] = {
    "Operational", "Degraded performance", "Partial outage", "Major outage"};
static const char *const indicator_names[CY_INDICATORS] = {"none", "minor", "major", "critical"};

const char *cy_component_status_name(int s)
{
    return s >= 0 && s < CY_COMPONENT_STATUSES ? comp_names[s] : "?";
}

const char *cy_component_status_label(int s)
{
    return s >= 0 && s < CY_COMPONENT_STATUSES ? comp_labels[s] : "?";
}

const char *cy_status_indicator_name(int i)
{
    return i >= 0 && i < CY_INDICATORS ? indicator_names[i] : "?";
}

/* ---- components and derivation ---- */

enum { C_MQTT, C_API, C_WEBHOOKS, C_MONITOR, C_SHARD0 };

static const struct {
    const char *id, *name, *description;
} services[C_SHARD0] = {
    {"mqtt", "MQTT device service", "Devices connect, publish and subscribe over MQTT"},
    {"api", "HTTP API", "Applications list devices, call their functions, read variables"},
    {"webhooks", "Webhooks", "Device events delivered to your endpoints"},
    {"monitor", "Monitor", "This page, metrics, alerts and canaries"},
};

int cy_status_components_init(cy_status_components *c, int shards, int64_t now_ms)
{
    if (!c || shards < 1 || shards > CY_STATUS_SHARDS_MAX) return CY_EINVAL;
    memset(c, 0, sizeof(*c));
    c->shards = shards;
    for (int i = 0; i < C_SHARD0 + shards; i++) {
        cy_status_component *x = &c->v[i];
        if (i < C_SHARD0) {
            snprintf(x->id, sizeof(x->id), "%s", services[i].id);
            snprintf(x->name, sizeof(x->name), "%s", services[i].name);
            snprintf(x->description, sizeof(x->description), "%s", services[i].description);
        } else {
            int k = i - C_SHARD0;
            snprintf(x->id, sizeof(x->id), "shard-%d", k);
            snprintf(x->name, sizeof(x->name), "Shard %d", k);
            snprintf(x->description, sizeof(x->description),
                     "The devices whose ids hash to shard %d: their sessions, calls and webhooks",
                     k);
        }
        x->status = CY_COMPONENT_OPERATIONAL;
        x->updated_ms = now_ms;
        x->position = i + 1;
    }
    c->n = (size_t)(C_SHARD0 + shards);
    c->indicator = CY_INDICATOR_NONE;
    c->description = "All Systems Operational";
    return 0;
}

const cy_status_component *cy_status_component_find(const cy_status_components *c, const char *id)
{
    if (!c || !id) return NULL;
    for (size_t i = 0; i < c->n; i++)
        if (!strcmp(c->v[i].id, id)) return &c->v[i];
    return NULL;
}

static int severity_level(const char *sev)
{
    if (!sev) return CY_COMPONENT_OPERATIONAL;
    if (!strcmp(sev, "critical")) return CY_COMPONENT_MAJOR_OUTAGE;
    if (!strcmp(sev, "warning")) return CY_COMPONENT_DEGRADED;
    return CY_COMPONENT_OPERATIONAL;
}

/* Shard number in s (digits, below shards), or -1. */
static int shard_num(const char *s, int shards)
{
    if (!s || !s[0] || strlen(s) > 2 || (s[0] == '0' && s[1])) return -1;
    int k = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        k = k * 10 + (*p - '0');
    }
    return k < shards ? k : -1;
}

static void worsen(int *st, int level)
{
    if (level > *st) *st = level;
}

void cy_status_derive(cy_status_components *c, const cy_status_alert *alerts, size_t n,
                      int64_t now_ms)
{
    int st[CY_STATUS_COMPONENTS_MAX] = {0};
    int shards = c->shards;
    for (size_t i = 0; i < n; i++) {
        const cy_status_alert *a = &alerts[i];
        int level = severity_level(a->severity);
        if (level == CY_COMPONENT_OPERATIONAL) continue;
        const char *comp = a->component ? a->component : "";
        int k = shard_num(a->shard, shards);
        if (a->shard && a->shard[0] && k < 0) continue; /* a shard this page does not have */
        if (k < 0 && !strncmp(comp, "shard-", 6)) k = shard_num(comp + 6, shards);
        int svc = -1;
        for (int s = 0; s < C_SHARD0; s++)
            if (!strcmp(comp, services[s].id)) svc = s;
        if (k >= 0) {
            worsen(&st[C_SHARD0 + k], level);
            /* One shard's slice of the API or of webhooks: at most partial. */
            if (svc == C_API || svc == C_WEBHOOKS)
                worsen(&st[svc],
                       level < CY_COMPONENT_PARTIAL_OUTAGE ? level : CY_COMPONENT_PARTIAL_OUTAGE);
        } else if (svc >= 0) {
            worsen(&st[svc], level);
        }
    }
    int down = 0, degraded = 0;
    for (int k = 0; k < shards; k++) {
        if (st[C_SHARD0 + k] == CY_COMPONENT_MAJOR_OUTAGE)
            down++;
        else if (st[C_SHARD0 + k] != CY_COMPONENT_OPERATIONAL)
            degraded++;
    }
    bool all = down == shards;
    worsen(&st[C_MQTT], all        ? CY_COMPONENT_MAJOR_OUTAGE
                        : down     ? CY_COMPONENT_PARTIAL_OUTAGE
                        : degraded ? CY_COMPONENT_DEGRADED
                                   : CY_COMPONENT_OPERATIONAL);
    worsen(&st[C_API], all    ? CY_COMPONENT_MAJOR_OUTAGE
                       : down ? CY_COMPONENT_PARTIAL_OUTAGE
                              : CY_COMPONENT_OPERATIONAL);
    worsen(&st[C_WEBHOOKS], all    ? CY_COMPONENT_MAJOR_OUTAGE
                            : down ? CY_COMPONENT_DEGRADED
                                   : CY_COMPONENT_OPERATIONAL);

    int worst = CY_COMPONENT_OPERATIONAL;
    size_t ndegraded = 0;
    for (size_t i = 0; i < c->n; i++) {
        cy_status_component *x = &c->v[i];
        if (x->status != st[i]) {
            x->status = st[i];
            x->updated_ms = now_ms;
        }
        worsen(&worst, st[i]);
        if (st[i] == CY_COMPONENT_DEGRADED) ndegraded++;
    }
    if (st[C_MQTT] == CY_COMPONENT_MAJOR_OUTAGE || st[C_API] == CY_COMPONENT_MAJOR_OUTAGE) {
        c->indicator = CY_INDICATOR_CRITICAL;
        c->description = "Major System Outage";
    } else if (worst >= CY_COMPONENT_PARTIAL_OUTAGE) {
        c->indicator = CY_INDICATOR_MAJOR;
        c->description = "Partial System Outage";
    } else if (worst == CY_COMPONENT_DEGRADED) {
        c->indicator = CY_INDICATOR_MINOR;
        c->description =
            ndegraded == c->n ? "Degraded System Service" : "Partially Degraded Service";
    } else {
        c->indicator = CY_INDICATOR_NONE;
        c->description = "All Systems Operational";
    }
}

/* ---- UTF-8 ---- */

/* Length of the valid UTF-8 sequence at p (left bytes remain), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t left)
{
    unsigned c = p[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > left) return 0;
    for (size_t k = 1; k < len; k++) {
        if ((p[k] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (p[k] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static const char REPLACEMENT[] = "\xef\xbf\xbd"; /* U+FFFD */

int cy_status_html_escape(cy_buf *out, const char *s)
{
    if (!s) return 0;
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), run = 0; /* bytes at p[i - run .. i) copied as they are */
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        const char *rep = NULL;
        size_t len = 1;
        switch (p[i]) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        case '"':
            rep = "&quot;";
            break;
        case '\'':
            rep = "&#39;";
            break;
        default:
            if (p[i] < 0x20 || p[i] == 0x7f) {
                if (p[i] != '\n' && p[i] != '\t') rep = "";
            } else if (p[i] >= 0x80) {
                len = utf8_seq(p + i, n - i);
                if (len == 0) {
                    rep = REPLACEMENT;
                    len = 1;
                }
            }
        }
        if (rep) {
            rc = cy_buf_append(out, p + i - run, run);
            if (rc == 0) rc = cy_buf_append(out, rep, strlen(rep));
            run = 0;
        } else {
            run += len;
        }
        i += len;
    }
    if (rc == 0) rc = cy_buf_append(out, p + n - run, run);
    return rc;
}

/* ---- HTML ---- */

typedef struct writer {
    cy_buf *b;
    int rc;
} writer;

static void put(writer *w, const char *s)
{
    if (!w->rc) w->rc = cy_buf_append(w->b, s, strlen(s));
}

static void esc(writer *w, const char *s)
{
    if (!w->rc) w->rc = cy_status_html_escape(w->b, s);
}

/* Formatted text the module writes itself (numbers, words): not escaped. */
__attribute__((format(printf, 2, 3))) static void putf(writer *w, const char *fmt, ...)
{
    if (w->rc) return;
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) {
        w->rc = CY_EINVAL;
        return;
    }
    if ((size_t)n < sizeof(tmp)) {
        w->rc = cy_buf_append(w->b, tmp, (size_t)n);
        return;
    }
    w->rc = cy_buf_reserve(w->b, (size_t)n + 1);
    if (w->rc) return;
    va_start(ap, fmt);
    vsnprintf((char *)w->b->data + w->b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    w->b->len += (size_t)n;
}

static const char *nz(const char *s, const char *dflt)
{
    return s && s[0] ? s : dflt;
}

/* "2026-11-24 03:08:20Z" for people. */
static void human_time(int64_t ms, char out[CY_STATUS_TIME_LEN])
{
    if (ms < 0) ms = 0;
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, CY_STATUS_TIME_LEN, "%Y-%m-%d %H:%M:%SZ", &tm);
}

static void put_time(writer *w, int64_t ms)
{
    char iso[CY_STATUS_TIME_LEN], h[CY_STATUS_TIME_LEN];
    cy_status_rfc3339(ms, iso);
    human_time(ms, h);
    putf(w, "<time datetime=\"%s\">%s</time>", iso, h);
}

static const char CSS[] =
    "body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1f2328}"
    "main{max-width:980px;margin:0 auto;padding:16px}"
    "h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.15em;margin:1.4em 0 .5em}"
    "h3{font-size:1em;margin:.2em 0}"
    ".banner{padding:14px 18px;border-radius:6px;color:#fff;font-weight:600;font-size:1.1em}"
    ".ind-none{background:#1a7f37}.ind-minor{background:#bf8700}"
    ".ind-major{background:#d1570b}.ind-critical{background:#cf222e}"
    "table{border-collapse:collapse;width:100%;background:#fff}"
    "td,th{padding:6px 8px;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}"
    "th small{display:block;font-weight:400;color:#656d76}"
    ".group th{background:#eef0f3;font-size:.9em}"
    ".st-operational .s{color:#1a7f37}.st-degraded_performance .s{color:#9a6700}"
    ".st-partial_outage .s{color:#d1570b}.st-major_outage .s{color:#cf222e;font-weight:600}"
    ".muted,.since{color:#656d76;font-size:.9em}"
    "ul.alerts{list-style:none;padding:0}"
    "ul.alerts li{background:#fff;border-left:5px solid #0969da;padding:8px 12px;margin:6px 0}"
    "li.sev-critical{border-color:#cf222e!important}li.sev-warning{border-color:#bf8700!important}"
    ".badge{display:inline-block;padding:0 6px;border-radius:9px;background:#eef0f3;"
    "font-size:.85em}"
    "pre{white-space:pre-wrap;background:#f6f8fa;padding:6px;margin:4px 0;font-size:.85em}"
    "article,details{background:#fff;padding:8px 12px;margin:8px 0;border-left:5px solid #d1570b}"
    "details{border-color:#1a7f37}"
    ".body{white-space:pre-wrap;margin:2px 0 8px}"
    "ol.updates{list-style:none;padding:0;margin:4px 0}"
    "tr.k-deploy td{background:#ddf4ff;font-weight:600}"
    "tr.k-alert_firing td:nth-child(2),tr.k-incident_opened td:nth-child(2){color:#cf222e}"
    "tr.k-alert_resolved td:nth-child(2),tr.k-incident_resolved td:nth-child(2){color:#1a7f37}"
    "svg{width:100%;height:auto;background:#fff;display:block}"
    "svg text{font:11px system-ui,sans-serif;fill:#656d76}"
    "svg .lane{fill:#f6f8fa}svg .axis{stroke:#8c959f}svg .tick{stroke:#d0d7de}"
    "svg .deploy{stroke:#0969da;stroke-width:2;stroke-dasharray:5 3}"
    "svg .m-deploy{fill:#0969da}svg .m-start{fill:#8c959f}svg .m-restart{fill:#d1570b}"
    "svg .bar-critical{fill:#cf222e}svg .bar-warning{fill:#bf8700}svg .bar-info{fill:#54aeff}"
    "svg .m-open{fill:#cf222e}svg .m-update{fill:#8c959f}svg .m-resolved{fill:#1a7f37}"
    "svg .m-note{fill:#6e7781}"
    "footer{margin:2em 0 1em;color:#656d76;font-size:.85em}";

static void html_components(writer *w, const cy_status_components *c)
{
    put(w, "<section id=\"components\"><h2>Components</h2><table>");
    for (size_t i = 0; i < c->n; i++) {
        const cy_status_component *x = &c->v[i];
        if (i == 0) put(w, "<tr class=\"group\"><th colspan=\"3\">Services</th></tr>");
        if (i == C_SHARD0)
            put(w, "<tr class=\"group\"><th colspan=\"3\">Shards (each serves the devices whose ids"
                   " hash to it)</th></tr>");
        putf(w, "<tr class=\"st-%s\" id=\"component-", cy_component_status_name(x->status));
        esc(w, x->id);
        put(w, "\"><th scope=\"row\">");
        esc(w, x->name);
        put(w, "<small>");
        esc(w, x->description);
        putf(w, "</small></th><td class=\"s\">%s</td><td class=\"since\">since ",
             cy_component_status_label(x->status));
        put_time(w, x->updated_ms);
        put(w, "</td></tr>");
    }
    put(w, "</table></section>");
}

static void html_alerts(writer *w, const cy_status_model *m)
{
    putf(w, "<section id=\"alerts\"><h2>Alerts firing (%zu)</h2>", m->nalerts);
    if (m->nalerts == 0) {
        put(w, "<p class=\"muted\">No alert is firing.</p></section>");
        return;
    }
    put(w, "<ul class=\"alerts\">");
    for (size_t i = 0; i < m->nalerts; i++) {
        const cy_status_alert *a = &m->alerts[i];
        const char *sev = nz(a->severity, "info");
        put(w, "<li class=\"sev-");
        put(w, !strcmp(sev, "critical")  ? "critical"
               : !strcmp(sev, "warning") ? "warning"
                                         : "info");
        put(w, "\"><b>");
        esc(w, nz(a->alertname, "(unnamed)"));
        put(w, "</b> <span class=\"badge\">");
        esc(w, sev);
        put(w, "</span> <span class=\"badge\">");
        char comp[CY_STATUS_ID_MAX + 1];
        esc(w, cy_status_alert_component(a, comp) == 0 ? comp : nz(a->component, "?"));
        put(w, "</span>");
        if (a->summary && a->summary[0]) {
            put(w, " ");
            esc(w, a->summary);
        }
        char dur[CY_STATUS_TIME_LEN];
        cy_status_duration(m->page.now_ms - a->since_ms, dur);
        put(w, "<br><span class=\"muted\">firing since ");
        put_time(w, a->since_ms);
        putf(w, " (%s)</span>", dur);
        if (a->evidence && a->evidence[0]) {
            put(w, "<pre>");
            esc(w, a->evidence);
            put(w, "</pre>");
        }
        put(w, "</li>");
    }
    put(w, "</ul></section>");
}

static const char *status_label(int s)
{
    static const char *const l[] = {"Investigating", "Identified", "Monitoring", "Resolved"};
    return s >= 0 && s < CY_INCIDENT_STATUSES ? l[s] : "?";
}

static void html_updates(writer *w, const cy_incident *inc)
{
    put(w, "<ol class=\"updates\">");
    for (size_t u = 0; u < inc->nupdates; u++) {
        const cy_incident_update *up = &inc->updates[u];
        putf(w, "<li><b>%s</b> <span class=\"muted\">", status_label(up->status));
        put_time(w, up->created_ms);
        put(w, "</span><div class=\"body\">");
        esc(w, up->body);
        put(w, "</div></li>");
    }
    put(w, "</ol>");
}

static void html_incident_meta(writer *w, const cy_incident *inc)
{
    putf(w, "<p class=\"muted\">#%lld · %s · impact %s", (long long)inc->id,
         status_label(inc->status), cy_incident_impact_name(inc->impact));
    if (inc->ncomponents) {
        put(w, " · ");
        for (size_t k = 0; k < inc->ncomponents; k++) {
            if (k) put(w, ", ");
            esc(w, inc->components[k]);
        }
    }
    put(w, " · started ");
    put_time(w, inc->started_ms);
    if (inc->nalerts) {
        put(w, " · alerts: ");
        for (size_t k = 0; k < inc->nalerts; k++) {
            if (k) put(w, ", ");
            esc(w, inc->alerts[k].alertname);
            put(w, inc->alerts[k].cleared_ms ? " (cleared)" : " (firing)");
        }
    }
    put(w, "</p>");
}

static void html_incidents(writer *w, const cy_status_model *m)
{
    put(w, "<section id=\"incidents\"><h2>Incidents</h2>");
    size_t open = 0, resolved = 0;
    for (size_t i = 0; i < m->nincidents; i++) {
        const cy_incident *inc = &m->incidents[i];
        if (inc->resolved_ms) {
            resolved++;
            continue;
        }
        open++;
        putf(w, "<article id=\"incident-%lld\"><h3>", (long long)inc->id);
        esc(w, inc->name);
        put(w, "</h3>");
        html_incident_meta(w, inc);
        html_updates(w, inc);
        put(w, "</article>");
    }
    if (!open) put(w, "<p class=\"muted\">No open incident.</p>");
    if (resolved) {
        put(w, "<h3>Resolved</h3>");
        for (size_t i = 0; i < m->nincidents; i++) {
            const cy_incident *inc = &m->incidents[i];
            if (!inc->resolved_ms) continue;
            char dur[CY_STATUS_TIME_LEN];
            cy_status_duration(inc->resolved_ms - inc->started_ms, dur);
            putf(w, "<details id=\"incident-%lld\"><summary>", (long long)inc->id);
            esc(w, inc->name);
            put(w, " <span class=\"muted\">resolved ");
            put_time(w, inc->resolved_ms);
            putf(w, " after %s</span></summary>", dur);
            html_incident_meta(w, inc);
            html_updates(w, inc);
            put(w, "</details>");
        }
    }
    put(w, "</section>");
}

/* ---- the time axis (inline SVG) ---- */

#define SVG_W 1000
#define SVG_L 96 /* lane labels */
#define SVG_R 12
#define LANE_H 22
#define LANE_TOP 6
enum { LANE_DEPLOY, LANE_RESTART, LANE_ALERT, LANE_INCIDENT, LANE_NOTE, LANES };
static const char *const lane_names[LANES] = {"Deploys", "Restarts", "Alerts", "Incidents",
                                              "Notes"};

/* What the axis needs of an alert event: from its details. */
typedef struct alert_mark {
    char fp[CY_STATUS_FP_MAX + 1];
    char severity[16];
} alert_mark;

typedef struct axis {
    int64_t start, end;
} axis;

static double ax_x(const axis *a, int64_t t)
{
    return SVG_L + (double)(t - a->start) * (SVG_W - SVG_L - SVG_R) / (double)(a->end - a->start);
}

static double lane_y(int lane)
{
    return LANE_TOP + lane * LANE_H + LANE_H / 2.0;
}

/* <title> of a mark: time, kind, component, text. */
static void svg_title(writer *w, const cy_timeline_event *e)
{
    char h[CY_STATUS_TIME_LEN];
    human_time(e->time_ms, h);
    putf(w, "<title>%s %s ", h, cy_timeline_kind_name(e->kind));
    if (e->component[0]) {
        esc(w, e->component);
        put(w, ": ");
    }
    esc(w, e->text);
    put(w, "</title>");
}

static void alert_marks(const cy_timeline_event *ev, size_t n, alert_mark *marks)
{
    for (size_t i = 0; i < n; i++) {
        marks[i].fp[0] = marks[i].severity[0] = '\0';
        if (ev[i].kind != CY_TL_ALERT_FIRING && ev[i].kind != CY_TL_ALERT_RESOLVED) continue;
        if (!ev[i].details) continue;
        json_t *j = json_loads(ev[i].details, 0, NULL);
        const char *fp = json_string_value(json_object_get(j, "fingerprint"));
        const char *sev = json_string_value(json_object_get(j, "severity"));
        snprintf(marks[i].fp, sizeof(marks[i].fp), "%s", fp ? fp : "");
        snprintf(marks[i].severity, sizeof(marks[i].severity), "%s", sev ? sev : "");
        json_decref(j);
    }
}

static const char *bar_class(const char *sev)
{
    return !strcmp(sev, "critical")  ? "bar-critical"
           : !strcmp(sev, "warning") ? "bar-warning"
                                     : "bar-info";
}

/* A bar on the alert lane from t0 to t1 for the alert event e. */
static void svg_bar(writer *w, const axis *a, int64_t t0, int64_t t1, const char *sev,
                    const cy_timeline_event *e)
{
    double x0 = ax_x(a, t0 < a->start ? a->start : t0), x1 = ax_x(a, t1 > a->end ? a->end : t1);
    if (x1 - x0 < 2) x1 = x0 + 2;
    putf(w, "<g><rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"8\"/>",
         bar_class(sev), x0, lane_y(LANE_ALERT) - 4, x1 - x0);
    svg_title(w, e);
    put(w, "</g>");
}

static void html_axis(writer *w, const cy_status_model *m)
{
    const cy_timeline_event *ev = m->events;
    size_t n = m->nevents;
    int64_t now = m->page.now_ms;
    int64_t span = m->page.timeline_span_ms > 0 ? m->page.timeline_span_ms : 24 * HOUR_MS;
    /* The last hour, stretched back to the newest deploy and to the start
     * of what is going on now (alerts firing, incidents open), so that one
     * glance tells whether the trouble began before or after the deploy. */
    int64_t from = now - HOUR_MS;
    for (size_t i = 0; i < n; i++)
        if (ev[i].kind == CY_TL_DEPLOY) {
            if (ev[i].time_ms < from) from = ev[i].time_ms;
            break; /* newest first: the newest deploy */
        }
    for (size_t i = 0; i < m->nalerts; i++)
        if (m->alerts[i].since_ms > 0 && m->alerts[i].since_ms < from) from = m->alerts[i].since_ms;
    for (size_t i = 0; i < m->nincidents; i++)
        if (!m->incidents[i].resolved_ms && m->incidents[i].started_ms > 0 &&
            m->incidents[i].started_ms < from)
            from = m->incidents[i].started_ms;
    axis a = {.start = from < now - span ? now - span : from, .end = now};
    a.start -= (a.end - a.start) / 40; /* room for the first mark */

    alert_mark *marks = n ? cy_calloc(n, sizeof(*marks)) : NULL;
    if (n && !marks) {
        w->rc = CY_ENOMEM;
        return;
    }
    alert_marks(ev, n, marks);

    int axis_y = LANE_TOP + LANES * LANE_H;
    putf(w, "<svg viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"Events on one time axis, UTC\">",
         SVG_W, axis_y + 22);
    for (int l = 0; l < LANES; l++) {
        if (l % 2 == 0)
            putf(w, "<rect class=\"lane\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\"/>", SVG_L,
                 LANE_TOP + l * LANE_H, SVG_W - SVG_L - SVG_R, LANE_H);
        putf(w, "<text x=\"4\" y=\"%.1f\">%s</text>", lane_y(l) + 4, lane_names[l]);
    }
    /* Ticks: a round step giving at most 8 of them. */
    static const int64_t steps[] = {MIN_MS,      2 * MIN_MS,  5 * MIN_MS,  10 * MIN_MS,
                                    15 * MIN_MS, 30 * MIN_MS, HOUR_MS,     2 * HOUR_MS,
                                    3 * HOUR_MS, 6 * HOUR_MS, 12 * HOUR_MS};
    int64_t step = steps[sizeof(steps) / sizeof(steps[0]) - 1];
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
        if ((a.end - a.start) / steps[i] <= 8) {
            step = steps[i];
            break;
        }
    putf(w, "<line class=\"axis\" x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\"/>", SVG_L, SVG_W - SVG_R,
         axis_y, axis_y);
    for (int64_t t = (a.start / step + 1) * step; t <= a.end; t += step) {
        double x = ax_x(&a, t);
        time_t s = (time_t)(t / 1000);
        struct tm tm;
        gmtime_r(&s, &tm);
        putf(w,
             "<line class=\"tick\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%d\"/>"
             "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%02d:%02d</text>",
             x, x, LANE_TOP, axis_y + 4, x, axis_y + 16, tm.tm_hour, tm.tm_min);
    }

    size_t hidden = 0;
    for (size_t i = 0; i < n; i++) {
        const cy_timeline_event *e = &ev[i];
        if (e->kind == CY_TL_ALERT_FIRING) {
            /* Its bar ends at the nearest newer resolution of the same alert. */
            int64_t end = now;
            for (size_t j = i; j-- > 0;)
                if (ev[j].kind == CY_TL_ALERT_RESOLVED && marks[i].fp[0] &&
                    !strcmp(marks[j].fp, marks[i].fp)) {
                    end = ev[j].time_ms;
                    break;
                }
            if (end < a.start) {
                hidden++;
                continue;
            }
            svg_bar(w, &a, e->time_ms, end, nz(marks[i].severity, "info"), e);
            continue;
        }
        if (e->kind == CY_TL_ALERT_RESOLVED) {
            /* A resolution whose firing is older than the list: a bar from the start. */
            bool paired = false;
            for (size_t j = i + 1; j < n && !paired; j++)
                paired = ev[j].kind == CY_TL_ALERT_FIRING && marks[i].fp[0] &&
                         !strcmp(marks[j].fp, marks[i].fp);
            if (e->time_ms < a.start) {
                hidden++;
            } else if (!paired) {
                svg_bar(w, &a, a.start, e->time_ms, "info", e);
            }
            continue;
        }
        if (e->time_ms < a.start) {
            hidden++;
            continue;
        }
        double x = ax_x(&a, e->time_ms);
        put(w, "<g>");
        svg_title(w, e);
        switch (e->kind) {
        case CY_TL_DEPLOY:
            putf(w,
                 "<line class=\"deploy\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%d\"/>"
                 "<path class=\"m-deploy\" d=\"M%.1f %.1fl6 6-6 6-6-6z\"/>",
                 x, x, LANE_TOP, axis_y, x, lane_y(LANE_DEPLOY) - 6);
            break;
        case CY_TL_START:
            putf(w, "<circle class=\"m-start\" cx=\"%.1f\" cy=\"%.1f\" r=\"3\"/>", x,
                 lane_y(LANE_DEPLOY));
            break;
        case CY_TL_RESTART:
            putf(w, "<circle class=\"m-restart\" cx=\"%.1f\" cy=\"%.1f\" r=\"5\"/>", x,
                 lane_y(LANE_RESTART));
            break;
        case CY_TL_INCIDENT_OPENED:
        case CY_TL_INCIDENT_RESOLVED:
            putf(w, "<rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"9\" height=\"9\"/>",
                 e->kind == CY_TL_INCIDENT_OPENED ? "m-open" : "m-resolved", x - 4.5,
                 lane_y(LANE_INCIDENT) - 4.5);
            break;
        case CY_TL_INCIDENT_UPDATE:
            putf(w, "<rect class=\"m-update\" x=\"%.1f\" y=\"%.1f\" width=\"3\" height=\"12\"/>",
                 x - 1.5, lane_y(LANE_INCIDENT) - 6);
            break;
        default:
            putf(w, "<circle class=\"m-note\" cx=\"%.1f\" cy=\"%.1f\" r=\"4\"/>", x,
                 lane_y(LANE_NOTE));
        }
        put(w, "</g>");
    }
    put(w, "</svg>");
    if (hidden)
        putf(w, "<p class=\"muted\">%zu older event%s only in the list below.</p>", hidden,
             hidden == 1 ? " is" : "s are");
    cy_free(marks);
}

static void html_timeline(writer *w, const cy_status_model *m)
{
    put(w, "<section id=\"timeline\"><h2>Timeline</h2>");
    html_axis(w, m);
    if (m->nevents == 0) {
        put(w, "<p class=\"muted\">No event recorded.</p></section>");
        return;
    }
    put(w, "<table class=\"timeline\"><tr><th>Time (UTC)</th><th>Event</th><th>Component</th>"
           "<th>What</th></tr>");
    for (size_t i = 0; i < m->nevents; i++) {
        const cy_timeline_event *e = &m->events[i];
        const char *kind = cy_timeline_kind_name(e->kind);
        putf(w, "<tr class=\"k-%s\"><td>", kind);
        put_time(w, e->time_ms);
        putf(w, "</td><td>%s</td><td>", kind);
        esc(w, e->component);
        put(w, "</td><td class=\"body\">");
        esc(w, e->text);
        put(w, "</td></tr>");
    }
    put(w, "</table></section>");
}

int cy_status_render_html(const cy_status_model *m, cy_buf *out)
{
    if (!m || !out || !m->components) return CY_EINVAL;
    size_t mark = out->len;
    writer w = {out, 0};
    const char *name = nz(m->page.name, "cyan");
    put(&w, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    if (m->page.refresh_s > 0)
        putf(&w, "<meta http-equiv=\"refresh\" content=\"%d\">", m->page.refresh_s);
    put(&w, "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>");
    esc(&w, name);
    put(&w, " status</title><style>");
    put(&w, CSS);
    put(&w, "</style></head><body><main><h1>");
    esc(&w, name);
    putf(&w, " status</h1><p class=\"banner ind-%s\">",
         cy_status_indicator_name(m->components->indicator));
    esc(&w, m->components->description);
    put(&w, "</p>");
    html_components(&w, m->components);
    html_alerts(&w, m);
    html_incidents(&w, m);
    html_timeline(&w, m);
    put(&w, "<footer>Updated ");
    put_time(&w, m->page.now_ms);
    if (m->page.version && m->page.version[0]) {
        put(&w, " · cyan ");
        esc(&w, m->page.version);
        if (m->page.commit && m->page.commit[0]) {
            put(&w, " (");
            esc(&w, m->page.commit);
            put(&w, ")");
        }
    }
    put(&w, " · JSON: <a href=\"/api/v2/summary.json\">summary</a>, "
            "<a href=\"/api/v2/incidents.json\">incidents</a>, "
            "<a href=\"/api/v2/timeline.json\">timeline</a></footer></main></body></html>\n");
    if (w.rc) out->len = mark;
    return w.rc;
}

/* ---- JSON ---- */

/* A JSON string of s (NULL: ""), bytes that are not UTF-8 replaced by
 * U+FFFD. NULL when out of memory. */
static json_t *jstr(const char *s)
{
    if (!s) s = "";
    json_t *j = json_string(s);
    if (j) return j;
    cy_buf b;
    cy_buf_init(&b);
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        size_t len = utf8_seq(p + i, n - i);
        rc = len ? cy_buf_append(&b, p + i, len) : cy_buf_append(&b, REPLACEMENT, 3);
        i += len ? len : 1;
    }
    j = rc ? NULL : json_stringn(b.data ? (const char *)b.data : "", b.len);
    cy_buf_fini(&b);
    return j;
}

/* RFC 3339 with ms, or null for 0 (never). */
static json_t *jtime(int64_t ms)
{
    if (ms == 0) return json_null();
    char s[CY_STATUS_TIME_LEN];
    cy_status_rfc3339(ms, s);
    return json_string(s);
}

static json_t *jid(int64_t id)
{
    char s[24];
    snprintf(s, sizeof(s), "%lld", (long long)id);
    return json_string(s);
}

static const char *page_id(const cy_status_model *m)
{
    return nz(m->page.id, "cyan");
}

/* The latest change the page shows. */
static int64_t page_updated(const cy_status_model *m)
{
    int64_t t = m->page.created_ms;
    for (size_t i = 0; i < m->components->n; i++)
        if (m->components->v[i].updated_ms > t) t = m->components->v[i].updated_ms;
    for (size_t i = 0; i < m->nincidents; i++)
        if (m->incidents[i].updated_ms > t) t = m->incidents[i].updated_ms;
    return t ? t : m->page.now_ms;
}

static json_t *j_page(const cy_status_model *m)
{
    return json_pack("{s:o, s:o, s:o, s:s, s:o}", "id", jstr(page_id(m)), "name",
                     jstr(nz(m->page.name, "cyan")), "url", jstr(nz(m->page.url, "/status")),
                     "time_zone", "Etc/UTC", "updated_at", jtime(page_updated(m)));
}

static json_t *j_component(const cy_status_model *m, const cy_status_component *x)
{
    int64_t created = m->page.created_ms ? m->page.created_ms : m->page.now_ms;
    return json_pack("{s:o, s:o, s:s, s:o, s:o, s:i, s:o, s:b, s:n, s:n, s:o, s:b, s:b}", "id",
                     jstr(x->id), "name", jstr(x->name), "status",
                     cy_component_status_name(x->status), "created_at", jtime(created),
                     "updated_at", jtime(x->updated_ms), "position", x->position, "description",
                     jstr(x->description), "showcase", 0, "start_date", "group_id", "page_id",
                     jstr(page_id(m)), "group", 0, "only_show_if_degraded", 0);
}

static json_t *j_update(const cy_status_model *m, const cy_incident_update *u)
{
    return json_pack("{s:o, s:s, s:o, s:o, s:o, s:o, s:o, s:n}", "id", jid(u->id), "status",
                     cy_incident_status_name(u->status), "body", jstr(u->body), "incident_id",
                     jid(u->incident_id), "created_at", jtime(u->created_ms), "updated_at",
                     jtime(u->created_ms), "display_at", jtime(u->created_ms),
                     "affected_components");
}

static json_t *j_incident(const cy_status_model *m, const cy_incident *inc)
{
    json_t *updates = json_array(), *comps = json_array();
    for (size_t i = 0; updates && i < inc->nupdates; i++)
        if (json_array_append_new(updates, j_update(m, &inc->updates[i]))) {
            json_decref(updates);
            updates = NULL;
        }
    for (size_t i = 0; comps && i < inc->ncomponents; i++) {
        const cy_status_component *x = cy_status_component_find(m->components, inc->components[i]);
        if (x && json_array_append_new(comps, j_component(m, x))) {
            json_decref(comps);
            comps = NULL;
        }
    }
    char link[600];
    snprintf(link, sizeof(link), "%s#incident-%lld", nz(m->page.url, "/status"),
             (long long)inc->id);
    return json_pack("{s:o, s:o, s:s, s:o, s:o, s:o, s:o, s:s, s:o, s:o, s:o, s:o, s:o}", "id",
                     jid(inc->id), "name", jstr(inc->name), "status",
                     cy_incident_status_name(inc->status), "created_at", jtime(inc->created_ms),
                     "updated_at", jtime(inc->updated_ms), "monitoring_at",
                     jtime(inc->monitoring_ms), "resolved_at", jtime(inc->resolved_ms), "impact",
                     cy_incident_impact_name(inc->impact), "shortlink", jstr(link), "started_at",
                     jtime(inc->started_ms), "page_id", jstr(page_id(m)), "incident_updates",
                     updates, "components", comps);
}

static json_t *j_incidents(const cy_status_model *m, bool unresolved_only)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < m->nincidents; i++) {
        if (unresolved_only && m->incidents[i].resolved_ms) continue;
        if (json_array_append_new(a, j_incident(m, &m->incidents[i]))) {
            json_decref(a);
            a = NULL;
        }
    }
    return a;
}

static int dump_cb(const char *buf, size_t size, void *data)
{
    return cy_buf_append(data, buf, size) ? -1 : 0;
}

/* Dump j (taken) into out: 0, or CY_ENOMEM when j is NULL or the dump fails. */
static int dump(json_t *j, cy_buf *out)
{
    if (!j) return CY_ENOMEM;
    size_t mark = out->len;
    int rc = json_dump_callback(j, dump_cb, out, JSON_COMPACT) ? CY_ENOMEM : 0;
    if (rc == 0) rc = cy_buf_append(out, "\n", 1);
    if (rc) out->len = mark;
    json_decref(j);
    return rc;
}

int cy_status_render_summary(const cy_status_model *m, cy_buf *out)
{
    if (!m || !out || !m->components) return CY_EINVAL;
    json_t *comps = json_array();
    for (size_t i = 0; comps && i < m->components->n; i++)
        if (json_array_append_new(comps, j_component(m, &m->components->v[i]))) {
            json_decref(comps);
            comps = NULL;
        }
    return dump(json_pack("{s:o, s:{s:s, s:o}, s:o, s:o, s:[]}", "page", j_page(m), "status",
                          "indicator", cy_status_indicator_name(m->components->indicator),
                          "description", jstr(m->components->description), "components", comps,
                          "incidents", j_incidents(m, true), "scheduled_maintenances"),
                out);
}

int cy_status_render_incidents(const cy_status_model *m, cy_buf *out)
{
    if (!m || !out || !m->components) return CY_EINVAL;
    return dump(json_pack("{s:o, s:o}", "page", j_page(m), "incidents", j_incidents(m, false)),
                out);
}

int cy_status_render_timeline(const cy_status_model *m, cy_buf *out)
{
    if (!m || !out || !m->components) return CY_EINVAL;
    json_t *events = json_array();
    for (size_t i = 0; events && i < m->nevents; i++) {
        const cy_timeline_event *e = &m->events[i];
        json_t *details = e->details ? json_loads(e->details, 0, NULL) : NULL;
        if (details && !json_is_object(details)) {
            json_decref(details);
            details = NULL;
        }
        json_t *comp = e->component[0] ? jstr(e->component) : json_null();
        json_t *x =
            json_pack("{s:o, s:o, s:s, s:o, s:o, s:o}", "id", jid(e->id), "time", jtime(e->time_ms),
                      "kind", cy_timeline_kind_name(e->kind), "component", comp, "text",
                      jstr(e->text), "details", details ? details : json_null());
        if (json_array_append_new(events, x)) {
            json_decref(events);
            events = NULL;
        }
    }
    return dump(json_pack("{s:o, s:o}", "page", j_page(m), "events", events), out);
}
