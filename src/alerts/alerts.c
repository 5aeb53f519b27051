/* alerts: see alerts.h. This file: label sets, the built-in rules, the
 * rules-file parser and the engine. The webhook body is in alerts_json.c.
 *
 * The engine keeps one `inst` per (rule, label set) seen: the state machine
 * (inactive, pending, firing), what it must remember between evaluations
 * (the previous value of each series it reads, when it last changed, when it
 * last increased, a reset-aware running total of increases and a short
 * history of it for `increase`), and the public cy_alert it shows. The
 * arrays that hold what an evaluation reports (active, transitions) grow
 * with the instance array, before an instance is added, so an evaluation
 * never fails half-way. */
#include "alerts/alerts.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- label sets ---------------------------------------------------------- */

/* Copy s into d[n], truncating. */
static void scopy(char *d, size_t n, const char *s)
{
    size_t l = strlen(s);
    if (l >= n) l = n - 1;
    memcpy(d, s, l);
    d[l] = '\0';
}

#define LNAME_MAX 64
#define LPAIRS_MAX 16

typedef struct lpair {
    char name[LNAME_MAX];
    char value[CY_SAMPLE_LABELS_MAX];
} lpair;

bool cy_alert_labels_next(const char *labels, size_t *pos, char *name, size_t nlen, char *value,
                          size_t vlen)
{
    const char *p = (labels ? labels : "") + *pos;
    if (!*p) return false;
    const char *eq = strchr(p, '=');
    if (!eq || eq[1] != '"' || eq == p) return false;
    size_t nl = (size_t)(eq - p);
    if (nlen) {
        size_t c = nl < nlen - 1 ? nl : nlen - 1;
        memcpy(name, p, c);
        name[c] = '\0';
    }
    const char *q = eq + 2;
    size_t o = 0;
    while (*q && *q != '"') {
        char c = *q;
        if (c == '\\' && q[1]) {
            q++;
            c = *q == 'n' ? '\n' : *q;
        }
        if (vlen && o + 1 < vlen) value[o++] = c;
        q++;
    }
    if (*q != '"') return false;
    if (vlen) value[o] = '\0';
    q++;
    if (*q == ',') q++;
    *pos = (size_t)(q - (labels ? labels : ""));
    return true;
}

/* Read a canonical set into pairs; false when malformed or too many. */
static bool pairs_read(const char *labels, lpair *v, size_t *n)
{
    size_t pos = 0;
    *n = 0;
    lpair tmp;
    while (cy_alert_labels_next(labels, &pos, tmp.name, sizeof(tmp.name), tmp.value,
                                sizeof(tmp.value))) {
        if (*n == LPAIRS_MAX) return false;
        v[(*n)++] = tmp;
    }
    return labels[pos] == '\0';
}

static void pairs_set(lpair *v, size_t *n, const char *name, const char *value)
{
    for (size_t i = 0; i < *n; i++)
        if (!strcmp(v[i].name, name)) {
            scopy(v[i].value, sizeof(v[i].value), value);
            return;
        }
    if (*n == LPAIRS_MAX) return;
    scopy(v[*n].name, sizeof(v[*n].name), name);
    scopy(v[*n].value, sizeof(v[*n].value), value);
    (*n)++;
}

static int pair_cmp(const void *a, const void *b)
{
    return strcmp(((const lpair *)a)->name, ((const lpair *)b)->name);
}

/* Render sorted pairs canonically. False when it does not fit. */
static bool pairs_render(lpair *v, size_t n, char *out, size_t len)
{
    qsort(v, n, sizeof(*v), pair_cmp);
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(out + o, len - o, "%s%s=\"", i ? "," : "", v[i].name);
        if (w < 0 || (size_t)w >= len - o) return false;
        o += (size_t)w;
        for (const char *c = v[i].value; *c; c++) {
            const char *rep = NULL;
            char one[2] = {*c, 0};
            if (*c == '\\')
                rep = "\\\\";
            else if (*c == '"')
                rep = "\\\"";
            else if (*c == '\n')
                rep = "\\n";
            else
                rep = one;
            size_t rl = strlen(rep);
            if (o + rl + 1 >= len) return false;
            memcpy(out + o, rep, rl);
            o += rl;
        }
        if (o + 2 > len) return false;
        out[o++] = '"';
        out[o] = '\0';
    }
    return true;
}

/* Prometheus' LabelSet fingerprint: FNV-1a 64 over name, 0xff, value, 0xff
 * of the labels sorted by name. */
static uint64_t pairs_fingerprint(const lpair *v, size_t n)
{
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < n; i++) {
        for (const char *c = v[i].name; *c; c++)
            h = (h ^ (uint8_t)*c) * 1099511628211ULL;
        h = (h ^ 0xffu) * 1099511628211ULL;
        for (const char *c = v[i].value; *c; c++)
            h = (h ^ (uint8_t)*c) * 1099511628211ULL;
        h = (h ^ 0xffu) * 1099511628211ULL;
    }
    return h;
}

/* ---- text helpers -------------------------------------------------------- */

const char *cy_alert_severity_name(int severity)
{
    switch (severity) {
    case CY_ALERT_CRITICAL:
        return "critical";
    case CY_ALERT_WARNING:
        return "warning";
    case CY_ALERT_INFO:
        return "info";
    default:
        return "unknown";
    }
}

const char *cy_alert_state_name(int state)
{
    switch (state) {
    case CY_ALERT_INACTIVE:
        return "inactive";
    case CY_ALERT_PENDING:
        return "pending";
    case CY_ALERT_FIRING:
        return "firing";
    case CY_ALERT_RESOLVED:
        return "resolved";
    default:
        return "unknown";
    }
}

void cy_alert_time(int64_t wall_ms, char *out, size_t len)
{
    if (!len) return;
    int64_t ms = wall_ms % 1000;
    time_t sec = (time_t)(wall_ms / 1000);
    if (ms < 0) {
        ms += 1000;
        sec--;
    }
    struct tm tm;
    if (!gmtime_r(&sec, &tm)) {
        snprintf(out, len, "?");
        return;
    }
    snprintf(out, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)ms);
}

/* A value for people: integers as integers, others with up to 3 decimals. */
static void fmt_value(double v, char *out, size_t len)
{
    if (isnan(v)) {
        snprintf(out, len, "NaN");
    } else if (isinf(v)) {
        snprintf(out, len, v > 0 ? "+Inf" : "-Inf");
    } else if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, len, "%.0f", v);
    } else if (fabs(v) < 0.001) {
        snprintf(out, len, "%g", v);
    } else {
        snprintf(out, len, "%.3f", v);
        char *dot = strchr(out, '.');
        if (dot) {
            char *e = out + strlen(out) - 1;
            while (e > dot && *e == '0')
                *e-- = '\0';
            if (e == dot) *e = '\0';
        }
    }
}

/* "name{labels}" or "name". */
static void fmt_series(const char *name, const char *labels, char *out, size_t len)
{
    if (labels && *labels)
        snprintf(out, len, "%s{%s}", name, labels);
    else
        snprintf(out, len, "%s", name);
}

static bool op_eval(int op, double v, double limit)
{
    switch (op) {
    case CY_ALERT_GT:
        return v > limit;
    case CY_ALERT_GE:
        return v >= limit;
    case CY_ALERT_LT:
        return v < limit;
    case CY_ALERT_LE:
        return v <= limit;
    case CY_ALERT_EQ:
        return v == limit;
    case CY_ALERT_NE:
        return v != limit;
    default:
        return false;
    }
}

static void fmt_dur(int64_t ms, char *out, size_t len)
{
    if (ms % 3600000 == 0 && ms)
        snprintf(out, len, "%lldh", (long long)(ms / 3600000));
    else if (ms % 60000 == 0 && ms)
        snprintf(out, len, "%lldm", (long long)(ms / 60000));
    else if (ms % 1000 == 0)
        snprintf(out, len, "%llds", (long long)(ms / 1000));
    else
        snprintf(out, len, "%lldms", (long long)ms);
}

/* Append to out[len] at *o, truncating (the texts are for people). */
static void cat(char *out, size_t len, size_t *o, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void cat(char *out, size_t len, size_t *o, const char *fmt, ...)
{
    if (*o >= len - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(out + *o, len - *o, fmt, ap);
    va_end(ap);
    if (w < 0) return;
    *o += (size_t)w;
    if (*o >= len) *o = len - 1;
}

/* ---- summary templates --------------------------------------------------- */

/* Length of the placeholder at p ("{{...}}") if it is a known one, else 0. */
static size_t placeholder(const char *p, char *key, size_t klen)
{
    if (strncmp(p, "{{", 2)) return 0;
    const char *e = strstr(p + 2, "}}");
    if (!e) return 0;
    const char *k = p + 2;
    while (k < e && *k == ' ')
        k++;
    const char *ke = e;
    while (ke > k && ke[-1] == ' ')
        ke--;
    size_t kl = (size_t)(ke - k);
    if (kl == 0 || kl >= klen) return 0;
    memcpy(key, k, kl);
    key[kl] = '\0';
    static const char *known[] = {"shard", "value", "alertname", "component", "severity"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (!strcmp(key, known[i])) return (size_t)(e + 2 - p);
    if (!strncmp(key, "labels.", 7) && key[7]) {
        for (const char *c = key + 7; *c; c++)
            if (!isalnum((unsigned char)*c) && *c != '_') return 0;
        return (size_t)(e + 2 - p);
    }
    return 0;
}

static void render_summary(const char *tpl, const cy_alert *a, const char *series_labels, char *out,
                           size_t len)
{
    size_t o = 0;
    out[0] = '\0';
    for (const char *p = tpl; *p && o < len - 1;) {
        char key[LNAME_MAX + 8];
        size_t pl = placeholder(p, key, sizeof(key));
        if (!pl) {
            out[o++] = *p++;
            out[o] = '\0';
            continue;
        }
        char v[CY_SAMPLE_LABELS_MAX] = "";
        if (!strcmp(key, "shard"))
            scopy(v, sizeof(v), a->shard);
        else if (!strcmp(key, "value"))
            fmt_value(a->value, v, sizeof(v));
        else if (!strcmp(key, "alertname"))
            scopy(v, sizeof(v), a->name);
        else if (!strcmp(key, "component"))
            scopy(v, sizeof(v), a->component);
        else if (!strcmp(key, "severity"))
            scopy(v, sizeof(v), cy_alert_severity_name(a->severity));
        else if (!cy_labels_get(series_labels, key + 7, v, sizeof(v)))
            v[0] = '\0';
        cat(out, len, &o, "%s", v);
        p += pl;
    }
}

static bool template_ok(const char *tpl, char *bad, size_t blen)
{
    for (const char *p = tpl; *p; p++) {
        if (p[0] == '{' && p[1] == '{') {
            char key[LNAME_MAX + 8];
            size_t pl = placeholder(p, key, sizeof(key));
            if (!pl) {
                const char *e = strstr(p, "}}");
                size_t l = e ? (size_t)(e + 2 - p) : strlen(p);
                snprintf(bad, blen, "%.*s", (int)(l < 40 ? l : 40), p);
                return false;
            }
            p += pl - 1;
        }
    }
    return true;
}

/* ---- built-in rules ------------------------------------------------------ */

static cy_alert_rule *rule_add(cy_alert_rules *r, const char *name, int kind, const char *metric,
                               int severity, const char *component, const char *summary)
{
    if (r->n == CY_ALERTS_MAX_RULES) return NULL;
    cy_alert_rule *x = &r->v[r->n++];
    memset(x, 0, sizeof(*x));
    scopy(x->name, sizeof(x->name), name);
    x->kind = kind;
    scopy(x->metric, sizeof(x->metric), metric);
    x->severity = severity;
    scopy(x->component, sizeof(x->component), component);
    scopy(x->summary, sizeof(x->summary), summary);
    return x;
}

void cy_alert_rules_defaults(cy_alert_rules *r, const cy_alert_params *p)
{
    int64_t wd = p && p->watchdog_timeout_ms > 0 ? p->watchdog_timeout_ms : 2000;
    int64_t ct = p && p->canary_timeout_ms > 0 ? p->canary_timeout_ms : 3000;
    int64_t ci = p && p->canary_interval_ms > 0 ? p->canary_interval_ms : 1000;
    /* Half the watchdog, so the alert fires before the supervisor replaces
     * the shard (and the evidence is gone); never under 250 ms (a shard
     * beats every 100 ms), never over 1 s (the issue: named within 5 s). */
    int64_t stale = wd / 2;
    if (stale < 250) stale = 250;
    if (stale > 1000) stale = 1000;
    int64_t down_for = wd * 5 / 2 > 5000 ? wd * 5 / 2 : 5000;
    char d1[32], d2[32], text[CY_ALERT_TEXT_MAX];

    memset(r, 0, sizeof(*r));
    cy_alert_rule *x;

    fmt_dur(down_for, d1, sizeof(d1));
    snprintf(text, sizeof(text),
             "shard {{shard}} has not been running for %s (crash loop or slow start)", d1);
    x = rule_add(r, "CyanShardDown", CY_ALERT_THRESHOLD, "cyan_shard_up", CY_ALERT_CRITICAL,
                 "shard", text);
    x->op = CY_ALERT_EQ;
    x->limit = 0;
    x->for_ms = down_for;

    x = rule_add(r, "CyanShardHeartbeatStale", CY_ALERT_THRESHOLD,
                 "cyan_shard_heartbeat_age_seconds", CY_ALERT_CRITICAL, "shard",
                 "shard {{shard}}'s loop has not turned for {{value}} s (stopped, spinning or "
                 "blocked)");
    x->op = CY_ALERT_GT;
    x->limit = (double)stale / 1000.0;

    fmt_dur(stale, d1, sizeof(d1));
    snprintf(text, sizeof(text),
             "shard {{shard}} has work owed but made no progress for over %s (stalled)", d1);
    x = rule_add(r, "CyanShardNoProgress", CY_ALERT_STALENESS, "cyan_shard_progress_total",
                 CY_ALERT_CRITICAL, "shard", text);
    snprintf(x->guard, sizeof(x->guard), "cyan_shard_backlog");
    x->max_age_ms = stale;

    x = rule_add(r, "CyanShardRestarting", CY_ALERT_INCREASE, "cyan_shard_restarts_total",
                 CY_ALERT_WARNING, "shard",
                 "shard {{shard}} was restarted ({{labels.reason}}) in the last minute");
    x->op = CY_ALERT_GT;
    x->limit = 0;
    /* A minute: long enough to be seen (a crash is replaced in a quarter
     * of a second, between two evaluations), short enough that the
     * incident it opens or joins closes soon after the shard is back. A
     * crash loop keeps it firing (and CyanShardDown during backoffs). */
    x->window_ms = 60000;

    fmt_dur(ct + ci, d1, sizeof(d1));
    snprintf(text, sizeof(text),
             "the {{labels.step}} canary on shard {{shard}} has not succeeded for %s", d1);
    x = rule_add(r, "CyanCanaryFailing", CY_ALERT_ABSENCE, "cyan_canary_success_total",
                 CY_ALERT_CRITICAL, "shard", text);
    x->max_age_ms = ct + ci;

    fmt_dur(10000, d1, sizeof(d1));
    fmt_dur(30000, d2, sizeof(d2));
    snprintf(text, sizeof(text),
             "publishes are received but none sent for %s while subscriptions exist", d2);
    x = rule_add(r, "CyanMessageFlowStopped", CY_ALERT_FLOW, "cyan_publish_received_total",
                 CY_ALERT_WARNING, "mqtt", text);
    snprintf(x->output, sizeof(x->output), "cyan_publish_sent_total");
    snprintf(x->guard, sizeof(x->guard), "cyan_subscriptions");
    x->window_ms = 10000;
    x->for_ms = 20000;
    x->sum = true;

    x = rule_add(r, "CyanMessagesDropped", CY_ALERT_INCREASE, "cyan_messages_dropped_total",
                 CY_ALERT_WARNING, "mqtt",
                 "{{value}} messages dropped on shard {{shard}} in the last minute");
    x->op = CY_ALERT_GT;
    x->limit = 0;
    x->window_ms = 60000;

    x = rule_add(r, "CyanSupervisorStale", CY_ALERT_THRESHOLD,
                 "cyan_supervisor_heartbeat_age_seconds", CY_ALERT_CRITICAL, "monitor",
                 "the supervisor's heartbeat is {{value}} s old: hung shards are not replaced");
    x->op = CY_ALERT_GT;
    x->limit = 2;

    rule_add(r, "CyanWatchdog", CY_ALERT_HEARTBEAT, "", CY_ALERT_INFO, "monitor",
             "always firing: cyan's alerting is alive (page if this stops arriving)");
}

const cy_alert_rule *cy_alert_rules_find(const cy_alert_rules *r, const char *name)
{
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->v[i].name, name)) return &r->v[i];
    return NULL;
}

/* ---- the rules file ------------------------------------------------------ */

#define TOK_MAX 512

/* One token at *p: runs to whitespace. Outside braces "double quotes" group
 * (and are removed, with \" and \\ escapes); inside braces everything is
 * kept verbatim (a selector's quotes belong to it). Returns 1, 0 at the end
 * of the line or a comment, -1 for an unterminated quote, -2 too long. */
static int next_tok(const char **pp, char *out)
{
    const char *p = *pp;
    while (*p == ' ' || *p == '\t' || *p == '\r')
        p++;
    if (!*p || *p == '\n' || *p == '#') {
        *pp = p;
        return 0;
    }
    size_t o = 0;
    int depth = 0;
    bool inq = false; /* inside quotes within braces */
    while (*p && *p != '\n') {
        char c = *p;
        if (depth > 0) {
            if (inq && c == '\\' && p[1] && p[1] != '\n') {
                if (o + 2 >= TOK_MAX) return -2;
                out[o++] = c;
                out[o++] = p[1];
                p += 2;
                continue;
            }
            /* Spaces inside braces belong to the selector. */
            if (c == '"')
                inq = !inq;
            else if (!inq && c == '}')
                depth--;
        } else {
            if (c == ' ' || c == '\t' || c == '\r') break;
            if (c == '{') depth++;
            if (c == '"') {
                p++;
                while (*p && *p != '"' && *p != '\n') {
                    if (*p == '\\' && (p[1] == '"' || p[1] == '\\')) p++;
                    if (o + 1 >= TOK_MAX) return -2;
                    out[o++] = *p++;
                }
                if (*p != '"') return -1;
                p++;
                continue;
            }
        }
        if (o + 1 >= TOK_MAX) return -2;
        out[o++] = c;
        p++;
    }
    if (depth > 0 || inq) return -1;
    out[o] = '\0';
    *pp = p;
    return 1;
}

static bool ident_ok(const char *s, size_t max, bool colon)
{
    size_t n = strlen(s);
    if (n == 0 || n >= max) return false;
    if (!isalpha((unsigned char)s[0]) && s[0] != '_' && !(colon && s[0] == ':')) return false;
    for (size_t i = 1; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && !(colon && s[i] == ':')) return false;
    return true;
}

/* "name" or "name{a=\"x\",...}" into name and a canonical selector. */
static bool parse_series(const char *t, char *name, char *selector)
{
    const char *b = strchr(t, '{');
    size_t nl = b ? (size_t)(b - t) : strlen(t);
    if (nl == 0 || nl >= CY_SAMPLE_NAME_MAX) return false;
    memcpy(name, t, nl);
    name[nl] = '\0';
    if (!ident_ok(name, CY_SAMPLE_NAME_MAX, true)) return false;
    selector[0] = '\0';
    if (!b) return true;
    size_t tl = strlen(t);
    if (t[tl - 1] != '}') return false;
    lpair v[LPAIRS_MAX];
    size_t n = 0;
    const char *p = b + 1, *end = t + tl - 1;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == ','))
            p++;
        if (p >= end) break;
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (!eq || eq + 1 >= end || eq[1] != '"' || n == LPAIRS_MAX) return false;
        size_t kl = (size_t)(eq - p);
        if (kl == 0 || kl >= LNAME_MAX) return false;
        memcpy(v[n].name, p, kl);
        v[n].name[kl] = '\0';
        if (!ident_ok(v[n].name, LNAME_MAX, false)) return false;
        const char *q = eq + 2;
        size_t o = 0;
        while (q < end && *q != '"') {
            char c = *q;
            if (c == '\\' && q + 1 < end) {
                q++;
                c = *q == 'n' ? '\n' : *q;
            }
            if (o + 1 >= sizeof(v[n].value)) return false;
            v[n].value[o++] = c;
            q++;
        }
        if (q >= end) return false;
        v[n].value[o] = '\0';
        for (size_t i = 0; i < n; i++)
            if (!strcmp(v[i].name, v[n].name)) return false;
        n++;
        p = q + 1;
        if (p < end && *p != ',' && *p != ' ') return false;
    }
    return pairs_render(v, n, selector, CY_SAMPLE_LABELS_MAX);
}

static bool parse_dur(const char *s, int64_t *out)
{
    if (!strcmp(s, "0")) {
        *out = 0;
        return true;
    }
    char *e;
    errno = 0;
    long long v = strtoll(s, &e, 10);
    if (e == s || errno || v < 0 || !isdigit((unsigned char)s[0])) return false;
    int64_t mul;
    if (!strcmp(e, "ms"))
        mul = 1;
    else if (!strcmp(e, "s"))
        mul = 1000;
    else if (!strcmp(e, "m"))
        mul = 60000;
    else if (!strcmp(e, "h"))
        mul = 3600000;
    else
        return false;
    if (v > (long long)(366LL * 24 * 3600000 / mul)) return false; /* a year */
    *out = (int64_t)v * mul;
    return true;
}

static bool parse_num(const char *s, double *out)
{
    char *e;
    errno = 0;
    double v = strtod(s, &e);
    if (e == s || *e || errno || !isfinite(v)) return false;
    *out = v;
    return true;
}

static int parse_op(const char *s)
{
    static const char *t[] = {">", ">=", "<", "<=", "==", "!="};
    for (int i = 0; i <= CY_ALERT_NE; i++)
        if (!strcmp(s, t[i])) return i;
    return -1;
}

static int parse_kind(const char *s)
{
    static const char *t[] = {"threshold", "increase", "staleness", "absence", "flow", "heartbeat"};
    for (int i = 0; i <= CY_ALERT_HEARTBEAT; i++)
        if (!strcmp(s, t[i])) return i;
    return -1;
}

typedef struct perr {
    char *buf;
    size_t len;
    const char *file;
    int line;
} perr;

static int fail(perr *pe, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(perr *pe, const char *fmt, ...)
{
    if (pe->buf && pe->len) {
        int w = snprintf(pe->buf, pe->len, "%s:%d: ", pe->file ? pe->file : "rules", pe->line);
        if (w >= 0 && (size_t)w < pe->len) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(pe->buf + w, pe->len - (size_t)w, fmt, ap);
            va_end(ap);
        }
    }
    return CY_ECONFIG;
}

/* Parse "alert ..." after the word alert, into x. */
static int parse_alert(const char **pp, cy_alert_rule *x, perr *pe)
{
    char t[TOK_MAX];
    int rc;
    memset(x, 0, sizeof(*x));
    x->severity = CY_ALERT_WARNING;
    snprintf(x->component, sizeof(x->component), "shard");

#define NEXT(what)                                                                                 \
    do {                                                                                           \
        rc = next_tok(pp, t);                                                                      \
        if (rc == -1) return fail(pe, "unterminated quote or brace");                              \
        if (rc == -2) return fail(pe, "token too long (max %d bytes)", TOK_MAX - 1);               \
        if (rc == 0) return fail(pe, "missing %s", what);                                          \
    } while (0)

    NEXT("alert name");
    if (!ident_ok(t, CY_ALERT_NAME_MAX, false))
        return fail(pe, "bad alert name '%.64s' (letters, digits, _; at most %d bytes)", t,
                    CY_ALERT_NAME_MAX - 1);
    scopy(x->name, sizeof(x->name), t);
    NEXT("kind");
    x->kind = parse_kind(t);
    if (x->kind < 0)
        return fail(pe,
                    "unknown kind '%.40s' (threshold, increase, staleness, absence, flow, "
                    "heartbeat)",
                    t);
    if (x->kind != CY_ALERT_HEARTBEAT) {
        NEXT(x->kind == CY_ALERT_FLOW ? "input series" : "series");
        if (!parse_series(t, x->metric, x->selector)) return fail(pe, "bad series '%.80s'", t);
    }
    if (x->kind == CY_ALERT_FLOW) {
        char sel[CY_SAMPLE_LABELS_MAX];
        NEXT("output series");
        if (!parse_series(t, x->output, sel) || sel[0])
            return fail(pe, "bad output series '%.80s' (a name: it takes the input's labels)", t);
    }
    if (x->kind == CY_ALERT_THRESHOLD || x->kind == CY_ALERT_INCREASE) {
        NEXT("operator");
        x->op = parse_op(t);
        if (x->op < 0) return fail(pe, "unknown operator '%.20s' (> >= < <= == !=)", t);
        NEXT("number");
        if (!parse_num(t, &x->limit)) return fail(pe, "bad number '%.40s'", t);
    }
    bool seen_window = false, seen_age = false;
    char seen[16][16];
    size_t nseen = 0;
    while ((rc = next_tok(pp, t)) == 1) {
        char *eq = strchr(t, '=');
        if (!eq || eq == t) return fail(pe, "expected key=value, got '%.60s'", t);
        *eq = '\0';
        const char *k = t, *v = eq + 1;
        for (size_t i = 0; i < nseen; i++)
            if (!strcmp(seen[i], k)) return fail(pe, "%s= given twice", k);
        if (nseen < 16) scopy(seen[nseen++], 16, k);
        if (!strcmp(k, "for")) {
            if (!parse_dur(v, &x->for_ms))
                return fail(pe, "bad duration '%.40s' for for= (0, 500ms, 2s, 1m, 1h)", v);
        } else if (!strcmp(k, "window")) {
            if (x->kind != CY_ALERT_INCREASE && x->kind != CY_ALERT_FLOW)
                return fail(pe, "window= applies to increase and flow only");
            if (!parse_dur(v, &x->window_ms) || x->window_ms == 0)
                return fail(pe, "bad duration '%.40s' for window= (500ms, 2s, 1m, 1h)", v);
            seen_window = true;
        } else if (!strcmp(k, "max_age")) {
            if (x->kind != CY_ALERT_STALENESS && x->kind != CY_ALERT_ABSENCE)
                return fail(pe, "max_age= applies to staleness and absence only");
            if (!parse_dur(v, &x->max_age_ms))
                return fail(pe, "bad duration '%.40s' for max_age= (0, 500ms, 2s, 1m, 1h)", v);
            seen_age = true;
        } else if (!strcmp(k, "while")) {
            if (x->kind == CY_ALERT_HEARTBEAT)
                return fail(pe, "while= does not apply to heartbeat");
            char sel[CY_SAMPLE_LABELS_MAX];
            if (!parse_series(v, x->guard, sel) || sel[0])
                return fail(pe, "bad guard series '%.80s' (a name: it takes the series' labels)",
                            v);
        } else if (!strcmp(k, "severity")) {
            if (!strcmp(v, "critical"))
                x->severity = CY_ALERT_CRITICAL;
            else if (!strcmp(v, "warning"))
                x->severity = CY_ALERT_WARNING;
            else if (!strcmp(v, "info"))
                x->severity = CY_ALERT_INFO;
            else
                return fail(pe, "unknown severity '%.40s' (critical, warning, info)", v);
        } else if (!strcmp(k, "component")) {
            size_t n = strlen(v);
            bool ok = n > 0 && n < 32;
            for (size_t i = 0; ok && i < n; i++)
                ok = islower((unsigned char)v[i]) || isdigit((unsigned char)v[i]) || v[i] == '-' ||
                     v[i] == '_';
            if (!ok) return fail(pe, "bad component '%.40s' (lower case, digits, - and _)", v);
            scopy(x->component, sizeof(x->component), v);
        } else if (!strcmp(k, "summary")) {
            if (strlen(v) >= sizeof(x->summary))
                return fail(pe, "summary too long (max %zu bytes)", sizeof(x->summary) - 1);
            char bad[48];
            if (!template_ok(v, bad, sizeof(bad)))
                return fail(pe,
                            "unknown placeholder '%s' in summary ({{shard}}, {{value}}, "
                            "{{alertname}}, {{component}}, {{severity}}, {{labels.NAME}})",
                            bad);
            scopy(x->summary, sizeof(x->summary), v);
        } else if (!strcmp(k, "sum")) {
            if (x->kind == CY_ALERT_HEARTBEAT) return fail(pe, "sum= does not apply to heartbeat");
            if (!strcmp(v, "yes") || !strcmp(v, "true"))
                x->sum = true;
            else if (!strcmp(v, "no") || !strcmp(v, "false"))
                x->sum = false;
            else
                return fail(pe, "bad value '%.20s' for sum= (yes, no)", v);
        } else {
            return fail(pe, "unknown key '%.40s'", k);
        }
    }
    if (rc == -1) return fail(pe, "unterminated quote or brace");
    if (rc == -2) return fail(pe, "token too long (max %d bytes)", TOK_MAX - 1);
    if ((x->kind == CY_ALERT_INCREASE || x->kind == CY_ALERT_FLOW) && !seen_window)
        return fail(pe, "%s needs window=", x->kind == CY_ALERT_FLOW ? "flow" : "increase");
    if ((x->kind == CY_ALERT_STALENESS || x->kind == CY_ALERT_ABSENCE) && !seen_age)
        return fail(pe, "%s needs max_age=", x->kind == CY_ALERT_ABSENCE ? "absence" : "staleness");
    if (!x->summary[0]) snprintf(x->summary, sizeof(x->summary), "%s on {{component}}", x->name);
#undef NEXT
    return 0;
}

int cy_alert_rules_parse(cy_alert_rules *r, const char *text, const char *file, char *err,
                         size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    cy_alert_rules *w = cy_malloc(sizeof(*w));
    if (!w) return CY_ENOMEM;
    memcpy(w, r, sizeof(*w));
    int defined[CY_ALERTS_MAX_RULES] = {0}; /* line that defined each rule in this text, 0 = none */
    perr pe = {err, errlen, file, 0};
    int rc = 0;
    const char *p = text ? text : "";
    cy_alert_rule *x = cy_malloc(sizeof(*x));
    if (!x) {
        cy_free(w);
        return CY_ENOMEM;
    }
    while (*p && rc == 0) {
        pe.line++;
        const char *eol = strchr(p, '\n');
        const char *next = eol ? eol + 1 : p + strlen(p);
        char t[TOK_MAX];
        const char *q = p;
        int k = next_tok(&q, t);
        if (k == -1)
            rc = fail(&pe, "unterminated quote or brace");
        else if (k == -2)
            rc = fail(&pe, "token too long (max %d bytes)", TOK_MAX - 1);
        else if (k == 0) {
            /* blank or comment */
        } else if (!strcmp(t, "alert")) {
            rc = parse_alert(&q, x, &pe);
            if (rc == 0) {
                size_t i;
                for (i = 0; i < w->n; i++)
                    if (!strcmp(w->v[i].name, x->name)) break;
                if (i < w->n && defined[i]) {
                    rc =
                        fail(&pe, "alert %s defined twice (first on line %d)", x->name, defined[i]);
                } else if (i < w->n) {
                    w->v[i] = *x; /* replaces a rule of the base set (a default) */
                    defined[i] = pe.line;
                } else if (w->n == CY_ALERTS_MAX_RULES) {
                    rc = fail(&pe, "too many rules (at most %d)", CY_ALERTS_MAX_RULES);
                } else {
                    w->v[w->n] = *x;
                    defined[w->n++] = pe.line;
                }
            }
        } else if (!strcmp(t, "disable")) {
            int k2 = next_tok(&q, t);
            if (k2 != 1) {
                rc = fail(&pe, "disable needs a rule name");
            } else {
                size_t i;
                for (i = 0; i < w->n; i++)
                    if (!strcmp(w->v[i].name, t)) break;
                if (i == w->n) {
                    rc = fail(&pe, "disable: no rule named '%.64s'", t);
                } else {
                    memmove(&w->v[i], &w->v[i + 1], (w->n - i - 1) * sizeof(w->v[0]));
                    memmove(&defined[i], &defined[i + 1], (w->n - i - 1) * sizeof(defined[0]));
                    w->n--;
                    if (next_tok(&q, t) != 0) rc = fail(&pe, "disable takes one name");
                }
            }
        } else {
            rc = fail(&pe, "unknown directive '%.40s' (alert, disable)", t);
        }
        p = next;
    }
    if (rc == 0) memcpy(r, w, sizeof(*w));
    cy_free(x);
    cy_free(w);
    return rc;
}

int cy_alert_rules_load(cy_alert_rules *r, const char *path, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) {
        if (err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return CY_EIO;
    }
    enum { MAX = 1 << 20 };
    char *buf = cy_malloc(MAX + 1);
    if (!buf) {
        fclose(f);
        return CY_ENOMEM;
    }
    size_t n = fread(buf, 1, MAX + 1, f);
    bool bad = ferror(f);
    fclose(f);
    if (bad || n > MAX) {
        if (err && errlen)
            snprintf(err, errlen, "%s: %s", path, bad ? "read error" : "larger than 1 MiB");
        cy_free(buf);
        return CY_EIO;
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', n)) {
        if (err && errlen) snprintf(err, errlen, "%s: not a text file", path);
        cy_free(buf);
        return CY_ECONFIG;
    }
    int rc = cy_alert_rules_parse(r, buf, path, err, errlen);
    cy_free(buf);
    return rc;
}

/* ---- the engine ---------------------------------------------------------- */

#define HIST 34 /* points of the running total kept over an increase window */

typedef struct track {
    bool have;
    double prev;
    int64_t changed_ms; /* last change (the sample's changed_ms when known) */
    int64_t inc_ms;     /* last increase */
    double acc;         /* increases seen so far (reset-aware) */
} track;

typedef struct hpt {
    int64_t t;
    double acc;
} hpt;

typedef struct inst {
    int rule;
    bool seen;
    char key[CY_SAMPLE_LABELS_MAX]; /* the series' labels (a sum rule: its selector) */
    int state;
    int64_t active_ms, starts_ms;
    int64_t guard_since; /* guard non-zero since (wall ms), 0 = not now */
    track in, out;
    hpt hist[HIST];
    int hn, hh; /* points held, index of the oldest */
    cy_alert a;
} inst;

struct cy_alerts {
    cy_alert_rules rules;
    cy_alerts_limits lim;
    inst *v;
    size_t n, cap;
    cy_alert *active; /* cap entries */
    size_t nactive;
    cy_alert *trans; /* cap + ncarry entries */
    size_t ntrans, trans_cap;
    cy_alert *carry; /* resolutions from set_rules, reported by the next eval */
    size_t ncarry;
    cy_alert *resolved; /* resolved_max entries, oldest first */
    size_t nresolved;
    int64_t last_now;
    uint64_t refused, evaluations;
};

int cy_alerts_new(cy_alerts **out, const cy_alert_rules *rules, const cy_alerts_limits *lim)
{
    *out = NULL;
    cy_alerts *e = cy_calloc(1, sizeof(*e));
    if (!e) return CY_ENOMEM;
    e->rules = *rules;
    if (lim) e->lim = *lim;
    if (!e->lim.max_instances) e->lim.max_instances = CY_ALERTS_MAX_INSTANCES;
    if (!e->lim.resolved_max) e->lim.resolved_max = CY_ALERTS_RESOLVED_MAX;
    if (!e->lim.resolved_keep_ms) e->lim.resolved_keep_ms = CY_ALERTS_RESOLVED_KEEP_MS;
    e->resolved = cy_calloc(e->lim.resolved_max, sizeof(cy_alert));
    if (!e->resolved) goto fail;
    *out = e;
    return 0;
fail:
    cy_alerts_free(e);
    return CY_ENOMEM;
}

void cy_alerts_free(cy_alerts *e)
{
    if (!e) return;
    cy_free(e->v);
    cy_free(e->active);
    cy_free(e->trans);
    cy_free(e->carry);
    cy_free(e->resolved);
    cy_free(e);
}

/* Room for n instances (and their reports) plus ncarry carried
 * resolutions. All or nothing. */
static int ensure(cy_alerts *e, size_t n, size_t ncarry)
{
    if (n > e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 16;
        while (cap < n)
            cap *= 2;
        if (cap > e->lim.max_instances) cap = e->lim.max_instances;
        if (cap < n) return CY_EINVAL;
        inst *v = cy_realloc(e->v, cap * sizeof(*v));
        if (!v) return CY_ENOMEM;
        e->v = v;
        cy_alert *a = cy_realloc(e->active, cap * sizeof(*a));
        if (!a) return CY_ENOMEM; /* v grew; cap unchanged: consistent */
        e->active = a;
        e->cap = cap;
    }
    size_t tc = e->cap + ncarry;
    if (tc > e->trans_cap) {
        cy_alert *t = cy_realloc(e->trans, tc * sizeof(*t));
        if (!t) return CY_ENOMEM;
        e->trans = t;
        e->trans_cap = tc;
    }
    return 0;
}

static void resolved_push(cy_alerts *e, const cy_alert *a)
{
    if (e->nresolved == e->lim.resolved_max) {
        memmove(&e->resolved[0], &e->resolved[1], (e->nresolved - 1) * sizeof(cy_alert));
        e->nresolved--;
    }
    e->resolved[e->nresolved++] = *a;
}

static bool rule_equal(const cy_alert_rule *a, const cy_alert_rule *b)
{
    return !strcmp(a->name, b->name) && a->kind == b->kind && !strcmp(a->metric, b->metric) &&
           !strcmp(a->selector, b->selector) && !strcmp(a->output, b->output) &&
           !strcmp(a->guard, b->guard) && a->op == b->op && a->limit == b->limit &&
           a->window_ms == b->window_ms && a->max_age_ms == b->max_age_ms &&
           a->for_ms == b->for_ms && a->sum == b->sum && a->severity == b->severity &&
           !strcmp(a->component, b->component) && !strcmp(a->summary, b->summary);
}

int cy_alerts_set_rules(cy_alerts *e, const cy_alert_rules *rules)
{
    int map[CY_ALERTS_MAX_RULES];
    for (size_t i = 0; i < e->rules.n; i++) {
        map[i] = -1;
        for (size_t j = 0; j < rules->n; j++)
            if (rule_equal(&e->rules.v[i], &rules->v[j])) {
                map[i] = (int)j;
                break;
            }
    }
    size_t nres = 0;
    for (size_t i = 0; i < e->n; i++)
        if (map[e->v[i].rule] < 0 && e->v[i].state == CY_ALERT_FIRING) nres++;
    if (nres) {
        cy_alert *c = cy_realloc(e->carry, (e->ncarry + nres) * sizeof(*c));
        if (!c) return CY_ENOMEM;
        e->carry = c;
        int rc = ensure(e, e->n, e->ncarry + nres);
        if (rc) return rc;
    }
    for (size_t i = 0; i < e->n;) {
        inst *x = &e->v[i];
        int to = map[x->rule];
        if (to >= 0) {
            x->rule = to;
            i++;
            continue;
        }
        if (x->state == CY_ALERT_FIRING) {
            x->a.state = CY_ALERT_RESOLVED;
            x->a.ends_at_ms = e->last_now;
            size_t o = strlen(x->a.evidence);
            cat(x->a.evidence, sizeof(x->a.evidence), &o, " (rule changed or removed)");
            e->carry[e->ncarry++] = x->a;
            resolved_push(e, &x->a);
        }
        e->v[i] = e->v[--e->n];
    }
    e->rules = *rules;
    return 0;
}

static inst *get_inst(cy_alerts *e, int rule, const char *key, int *rc)
{
    for (size_t i = 0; i < e->n; i++)
        if (e->v[i].rule == rule && !strcmp(e->v[i].key, key)) return &e->v[i];
    if (e->n >= e->lim.max_instances) {
        e->refused++;
        return NULL;
    }
    int r = ensure(e, e->n + 1, e->ncarry);
    if (r) {
        e->refused++;
        *rc = CY_ENOMEM;
        return NULL;
    }
    inst *x = &e->v[e->n++];
    memset(x, 0, sizeof(*x));
    x->rule = rule;
    scopy(x->key, sizeof(x->key), key);
    return x;
}

/* Follow a series: its changed time, last increase and running total.
 * `sum`: a drop is some member's reset, not an increase of the whole. */
static void track_update(track *t, double v, int64_t src_changed, int64_t now, bool sum)
{
    int64_t src = src_changed > 0 && src_changed <= now ? src_changed : 0;
    if (!t->have) {
        t->have = true;
        t->prev = v;
        t->changed_ms = src ? src : now;
        t->inc_ms = t->changed_ms;
        t->acc = 0;
        return;
    }
    double inc = 0;
    if (v > t->prev)
        inc = v - t->prev;
    else if (v < t->prev && !sum)
        inc = v; /* a counter reset: it counted v since */
    if (v != t->prev)
        t->changed_ms = src ? src : now;
    else if (src > t->changed_ms)
        t->changed_ms = src; /* moved and came back between looks */
    if (inc > 0) {
        t->acc += inc;
        t->inc_ms = src ? src : now;
    }
    t->prev = v;
}

static double hist_increase(inst *x, int64_t window, int64_t now)
{
    int64_t step = window / 32 > 0 ? window / 32 : 1;
    int last = (x->hh + x->hn - 1) % HIST;
    if (x->hn == 0 || now - x->hist[last].t >= step) {
        if (x->hn == HIST) {
            x->hh = (x->hh + 1) % HIST;
            x->hn--;
        }
        int at = (x->hh + x->hn) % HIST;
        x->hist[at].t = now;
        x->hist[at].acc = x->in.acc;
        x->hn++;
    }
    /* The newest point at or before now - window, else the oldest. */
    double base = x->hist[x->hh].acc;
    for (int k = x->hn - 1; k >= 0; k--) {
        const hpt *p = &x->hist[(x->hh + k) % HIST];
        if (p->t <= now - window) {
            base = p->acc;
            break;
        }
    }
    return x->in.acc - base;
}

typedef struct obs {
    double v;
    int64_t changed;
    bool stale;
    bool out_have;
    double out_v;
    int64_t out_changed;
    bool guard_have;
    double guard_v;
    int64_t guard_changed;
} obs;

static void build_labels(cy_alerts *e, inst *x, const cy_alert_rule *r)
{
    cy_alert *a = &x->a;
    lpair v[LPAIRS_MAX];
    size_t n = 0;
    if (!pairs_read(x->key, v, &n)) n = 0;
    a->shard[0] = '\0';
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v[i].name, "shard")) scopy(a->shard, sizeof(a->shard), v[i].value);
    if (!strcmp(r->component, "shard")) {
        if (a->shard[0])
            snprintf(a->component, sizeof(a->component), "shard-%s", a->shard);
        else
            snprintf(a->component, sizeof(a->component), "mqtt");
    } else {
        scopy(a->component, sizeof(a->component), r->component);
    }
    pairs_set(v, &n, "alertname", r->name);
    pairs_set(v, &n, "severity", cy_alert_severity_name(r->severity));
    pairs_set(v, &n, "component", a->component);
    if (!pairs_render(v, n, a->labels, sizeof(a->labels))) {
        /* Cannot happen with sample.h's bounds; keep the three that matter. */
        n = 0;
        pairs_set(v, &n, "alertname", r->name);
        pairs_set(v, &n, "severity", cy_alert_severity_name(r->severity));
        pairs_set(v, &n, "component", a->component);
        pairs_render(v, n, a->labels, sizeof(a->labels));
    }
    a->fingerprint = pairs_fingerprint(v, n);
    scopy(a->name, sizeof(a->name), r->name);
    a->severity = r->severity;
    (void)e;
}

/* Evaluate one instance with what the snapshot says of it. */
static void observe(cy_alerts *e, inst *x, const cy_alert_rule *r, const obs *o, int64_t now)
{
    x->seen = true;
    bool cond = false;
    double value = o->v;
    if (r->kind != CY_ALERT_HEARTBEAT) track_update(&x->in, o->v, o->changed, now, r->sum);
    if (r->kind == CY_ALERT_FLOW && o->out_have)
        track_update(&x->out, o->out_v, o->out_changed, now, r->sum);
    bool guard_ok = true;
    if (r->guard[0]) {
        if (!o->guard_have || o->guard_v == 0) {
            x->guard_since = 0;
            guard_ok = false;
        } else if (!x->guard_since) {
            x->guard_since =
                o->guard_changed > 0 && o->guard_changed <= now ? o->guard_changed : now;
        }
    }
    switch (r->kind) {
    case CY_ALERT_THRESHOLD:
        cond = op_eval(r->op, o->v, r->limit);
        break;
    case CY_ALERT_INCREASE:
        value = hist_increase(x, r->window_ms, now);
        cond = op_eval(r->op, value, r->limit);
        break;
    case CY_ALERT_STALENESS:
    case CY_ALERT_ABSENCE: {
        int64_t since = r->kind == CY_ALERT_STALENESS ? x->in.changed_ms : x->in.inc_ms;
        if (r->guard[0] && x->guard_since > since) since = x->guard_since;
        cond = now - since > r->max_age_ms;
        break;
    }
    case CY_ALERT_FLOW:
        cond = o->out_have && now - x->in.inc_ms <= r->window_ms &&
               now - x->out.changed_ms > r->window_ms;
        break;
    case CY_ALERT_HEARTBEAT:
        cond = true;
        value = 1;
        break;
    }
    cond = cond && guard_ok;

    if (!x->a.labels[0]) build_labels(e, x, r);
    x->a.value = value;

    bool fired = false;
    if (cond) {
        if (x->state == CY_ALERT_INACTIVE) {
            x->state = CY_ALERT_PENDING;
            x->active_ms = now;
        }
        if (x->state == CY_ALERT_PENDING && now - x->active_ms >= r->for_ms) {
            x->state = CY_ALERT_FIRING;
            x->starts_ms = now;
            fired = true;
        }
    }
    bool resolving = !cond && x->state == CY_ALERT_FIRING;
    if (cond) {
        /* Texts describe the alert while it is true; a resolved alert keeps
         * the last ones (what it was about), as Prometheus does. */
        char sname[CY_SAMPLE_NAME_MAX + CY_SAMPLE_LABELS_MAX + 4], t1[32], t2[32], v1[48], v2[48];
        char *ev = x->a.evidence;
        size_t el = sizeof(x->a.evidence), off = 0;
        ev[0] = '\0';
        fmt_series(r->metric, x->key, sname, sizeof(sname));
        fmt_value(o->v, v1, sizeof(v1));
        switch (r->kind) {
        case CY_ALERT_THRESHOLD: {
            int64_t s = x->in.changed_ms < x->active_ms ? x->in.changed_ms : x->active_ms;
            cy_alert_time(s, t1, sizeof(t1));
            cat(ev, el, &off, "%s = %s since %s", sname, v1, t1);
            break;
        }
        case CY_ALERT_INCREASE:
            fmt_value(value, v2, sizeof(v2));
            fmt_dur(r->window_ms, t2, sizeof(t2));
            cy_alert_time(x->in.inc_ms, t1, sizeof(t1));
            cat(ev, el, &off, "%s rose by %s in the last %s to %s, last at %s", sname, v2, t2, v1,
                t1);
            break;
        case CY_ALERT_STALENESS:
            cy_alert_time(x->in.changed_ms, t1, sizeof(t1));
            cat(ev, el, &off, "%s = %s unchanged since %s", sname, v1, t1);
            break;
        case CY_ALERT_ABSENCE:
            cy_alert_time(x->in.inc_ms, t1, sizeof(t1));
            cat(ev, el, &off, "%s = %s, no increase since %s", sname, v1, t1);
            break;
        case CY_ALERT_FLOW: {
            cy_alert_time(x->in.inc_ms, t1, sizeof(t1));
            cy_alert_time(x->out.changed_ms, t2, sizeof(t2));
            fmt_value(o->out_v, v2, sizeof(v2));
            char oname[CY_SAMPLE_NAME_MAX + CY_SAMPLE_LABELS_MAX + 4];
            fmt_series(r->output, x->key, oname, sizeof(oname));
            cat(ev, el, &off, "%s%s = %s rose at %s; %s%s = %s unchanged since %s",
                r->sum ? "sum " : "", sname, v1, t1, r->sum ? "sum " : "", oname, v2, t2);
            break;
        }
        case CY_ALERT_HEARTBEAT:
            cy_alert_time(x->active_ms, t1, sizeof(t1));
            cat(ev, el, &off, "always firing since %s", t1);
            break;
        }
        if (r->guard[0]) {
            char gname[CY_SAMPLE_NAME_MAX + CY_SAMPLE_LABELS_MAX + 4];
            fmt_series(r->guard, x->key, gname, sizeof(gname));
            fmt_value(o->guard_v, v2, sizeof(v2));
            cat(ev, el, &off, " while %s%s = %s", r->sum ? "sum " : "", gname, v2);
        }
        if (o->stale) cat(ev, el, &off, " (last known value: its producer is not running)");
        render_summary(r->summary, &x->a, x->key, x->a.summary, sizeof(x->a.summary));
    }
    x->a.active_ms = x->state == CY_ALERT_INACTIVE ? 0 : x->active_ms;
    x->a.starts_at_ms = x->state == CY_ALERT_FIRING ? x->starts_ms : 0;
    x->a.ends_at_ms = 0;
    x->a.state = x->state;
    if (fired) e->trans[e->ntrans++] = x->a;
    if (resolving) {
        x->a.state = CY_ALERT_RESOLVED;
        x->a.starts_at_ms = x->starts_ms;
        x->a.ends_at_ms = now;
        e->trans[e->ntrans++] = x->a;
        resolved_push(e, &x->a);
    }
    if (!cond) x->state = CY_ALERT_INACTIVE;
}

static int active_cmp(const void *pa, const void *pb)
{
    const cy_alert *a = pa, *b = pb;
    if (a->state != b->state) return a->state == CY_ALERT_FIRING ? -1 : 1;
    if (a->severity != b->severity) return a->severity - b->severity;
    int c = strcmp(a->name, b->name);
    return c ? c : strcmp(a->labels, b->labels);
}

static void sum_of(const cy_snapshot *s, const char *name, const char *selector, bool *have,
                   double *v, int64_t *changed, bool *stale)
{
    *have = false;
    *v = 0;
    *changed = 0;
    bool known = true;
    for (size_t i = 0; i < s->n; i++) {
        const cy_sample *x = &s->v[i];
        if (strcmp(x->name, name) || !cy_labels_match(x->labels, selector)) continue;
        *have = true;
        *v += x->value;
        if (!x->changed_ms) known = false;
        if (x->changed_ms > *changed) *changed = x->changed_ms;
        if (stale && x->stale) *stale = true;
    }
    if (!known) *changed = 0; /* one member's time unknown: the engine tracks the sum */
}

int cy_alerts_eval(cy_alerts *e, const cy_snapshot *s, int64_t now_ms)
{
    int rc = 0;
    if (now_ms < e->last_now) now_ms = e->last_now; /* a clock step back: hold */
    e->evaluations++;
    e->ntrans = 0;
    if (e->ncarry) {
        /* set_rules reserved room for them; ncarry stays set until the end
         * so that a growth of the arrays during this evaluation keeps it. */
        memcpy(e->trans, e->carry, e->ncarry * sizeof(cy_alert));
        e->ntrans = e->ncarry;
    }
    for (size_t i = 0; i < e->n; i++)
        e->v[i].seen = false;

    for (size_t ri = 0; ri < e->rules.n; ri++) {
        const cy_alert_rule *r = &e->rules.v[ri];
        obs o;
        memset(&o, 0, sizeof(o));
        if (r->kind == CY_ALERT_HEARTBEAT) {
            inst *x = get_inst(e, (int)ri, "", &rc);
            if (x) observe(e, x, r, &o, now_ms);
            continue;
        }
        if (r->sum) {
            bool have;
            sum_of(s, r->metric, r->selector, &have, &o.v, &o.changed, &o.stale);
            if (!have) continue;
            if (r->output[0])
                sum_of(s, r->output, r->selector, &o.out_have, &o.out_v, &o.out_changed, NULL);
            if (r->guard[0])
                sum_of(s, r->guard, r->selector, &o.guard_have, &o.guard_v, &o.guard_changed, NULL);
            inst *x = get_inst(e, (int)ri, r->selector, &rc);
            if (x) observe(e, x, r, &o, now_ms);
            continue;
        }
        for (size_t i = 0; i < s->n; i++) {
            const cy_sample *m = &s->v[i];
            if (strcmp(m->name, r->metric) || !cy_labels_match(m->labels, r->selector)) continue;
            memset(&o, 0, sizeof(o));
            o.v = m->value;
            o.changed = m->changed_ms;
            o.stale = m->stale;
            if (r->output[0]) {
                const cy_sample *y = cy_snapshot_find(s, r->output, m->labels);
                if (y) {
                    o.out_have = true;
                    o.out_v = y->value;
                    o.out_changed = y->changed_ms;
                }
            }
            if (r->guard[0]) {
                const cy_sample *g = cy_snapshot_find(s, r->guard, m->labels);
                if (g) {
                    o.guard_have = true;
                    o.guard_v = g->value;
                    o.guard_changed = g->changed_ms;
                }
            }
            inst *x = get_inst(e, (int)ri, m->labels, &rc);
            if (x) observe(e, x, r, &o, now_ms);
        }
    }

    /* Series gone: a firing alert resolves, the instance goes. */
    for (size_t i = 0; i < e->n;) {
        inst *x = &e->v[i];
        if (x->seen) {
            i++;
            continue;
        }
        if (x->state == CY_ALERT_FIRING) {
            x->a.state = CY_ALERT_RESOLVED;
            x->a.ends_at_ms = now_ms;
            char sname[CY_SAMPLE_NAME_MAX + CY_SAMPLE_LABELS_MAX + 4];
            fmt_series(e->rules.v[x->rule].metric, x->key, sname, sizeof(sname));
            snprintf(x->a.evidence, sizeof(x->a.evidence), "%s is no longer reported", sname);
            e->trans[e->ntrans++] = x->a;
            resolved_push(e, &x->a);
        }
        e->v[i] = e->v[--e->n];
    }

    /* Forget resolved alerts past their keep time. */
    size_t drop = 0;
    while (drop < e->nresolved && now_ms - e->resolved[drop].ends_at_ms > e->lim.resolved_keep_ms)
        drop++;
    if (drop) {
        memmove(&e->resolved[0], &e->resolved[drop], (e->nresolved - drop) * sizeof(cy_alert));
        e->nresolved -= drop;
    }

    e->nactive = 0;
    for (size_t i = 0; i < e->n; i++)
        if (e->v[i].state != CY_ALERT_INACTIVE) e->active[e->nactive++] = e->v[i].a;
    if (e->nactive) qsort(e->active, e->nactive, sizeof(cy_alert), active_cmp);
    e->ncarry = 0;
    e->last_now = now_ms;
    return rc;
}

const cy_alert *cy_alerts_transitions(const cy_alerts *e, size_t *n)
{
    *n = e->ntrans;
    return e->trans;
}

const cy_alert *cy_alerts_active(const cy_alerts *e, size_t *n)
{
    *n = e->nactive;
    return e->active;
}

const cy_alert *cy_alerts_resolved(const cy_alerts *e, size_t *n)
{
    *n = e->nresolved;
    return e->resolved;
}

void cy_alerts_stats_get(const cy_alerts *e, cy_alerts_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->rules = e->rules.n;
    st->instances = e->n;
    for (size_t i = 0; i < e->n; i++) {
        if (e->v[i].state == CY_ALERT_PENDING) st->pending++;
        if (e->v[i].state == CY_ALERT_FIRING) st->firing++;
    }
    st->resolved = e->nresolved;
    st->instances_refused = e->refused;
    st->evaluations = e->evaluations;
}
