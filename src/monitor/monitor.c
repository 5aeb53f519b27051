/* monitor: see monitor.h.
 *
 * The idea needed to read this file: everything hangs off two timers on
 * one libuv loop. `beat` (100 ms) keeps the monitor's own heartbeat, as a
 * shard does, so the supervisor can judge it. `eval` (1 s) takes a
 * snapshot of the node (sample.h's model: one flat list of series built
 * from the scoreboard, the canaries and /proc), then hands it to the alert
 * engine, the status page and the timeline. The HTTP handler only reads the
 * last snapshot and what the engines hold, so a request costs no scoreboard
 * walk and every reader of one second sees the same figures.
 */
#include "monitor/monitor.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "core/cy_version.h"
#include "health/metrics.h"
#include "health/scoreboard.h"
#include "http/http.h"
#include "alerts/alerts.h"
#include "monitor/canary.h"
#include "alerts/notify.h"
#include "status/statusdb.h"
#include "status/statuspage.h"
#include "store/store.h"

#include <jansson.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <uv.h>

#define OPS_FD 3
#define SUPERVISOR_FD 4
#define BEAT_MS 100
#define EVAL_MS 1000
#define RELOAD_MAX 8192
#define REPEAT_MS 60000   /* firing alerts are sent again this often (the heartbeat rule's beat) */
#define MAX_RECEIVERS 8  /* alert_webhooks URLs */
#define FP_LEN 17        /* a fingerprint in hex, with the NUL */

typedef struct mon {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint, sighup, sigusr1, sigusr2;
    uv_pipe_t supervisor;
    uv_timer_t beat, eval;
    cy_config live;
    cy_scoreboard sb;
    cy_sb_slot *slot;
    cy_registry *reg;
    cy_http *http;
    unsigned index, nshards;
    bool stopping;
    uint64_t evals;
    int64_t off; /* wall-clock ms minus monotonic ms, to show monotonic times as dates */
    cy_snapshot snap, prev; /* this second's and the last one's */
    cy_statusdb *db;         /* data_dir/monitor.db; NULL if it cannot be opened */
    cy_status_components comps;
    cy_status_alert *firing; /* the alerts firing now, for the page */
    size_t nfiring;
    uint64_t event_seq;      /* the supervisor's events taken into the timeline */
    cy_alerts *alerts;       /* the engine (alerts.h) */
    int64_t reconcile_at_ms; /* wall ms after which incidents of alerts gone are closed, 0 done */
    char (*fps)[FP_LEN];     /* hex fingerprints of m->firing */
    size_t firing_cap;
    cy_notify *notify;       /* NULL without alert_webhooks */
    int64_t repeat_ms;       /* wall ms of the last full send of the firing alerts */
    char *urls[MAX_RECEIVERS];
    size_t nurls;
    cy_canary *canary[CY_SB_MAX_SHARDS]; /* one per shard; NULL with canaries off */
    int64_t canary_ok[CY_SB_MAX_SHARDS][CY_CANARY_NSTEPS]; /* monotonic ms of the last success */
    int nsteps;                                            /* steps the canaries walk */
    char seq_path[600];      /* data_dir/run/monitor-events: where that position is kept */
    size_t inlen;
    char in[RELOAD_MAX];
} mon;

/* ---- Prometheus text ---- */

static const char *type_word(int kind)
{
    return kind == CY_SAMPLE_COUNTER ? "counter" : kind == CY_SAMPLE_HISTOGRAM ? "histogram" : "gauge";
}

/* The family a sample belongs to: its name, or for a histogram's series the
 * name without _bucket, _sum or _count. */
static size_t family_len(const cy_sample *x)
{
    size_t n = strlen(x->name);
    if (x->kind != CY_SAMPLE_HISTOGRAM) return n;
    static const char *const sfx[] = {"_bucket", "_sum", "_count"};
    for (size_t i = 0; i < 3; i++) {
        size_t k = strlen(sfx[i]);
        if (n > k && !strcmp(x->name + n - k, sfx[i])) return n - k;
    }
    return n;
}

static bool same_family(const cy_sample *a, const cy_sample *b)
{
    size_t n = family_len(a);
    return a->kind == b->kind && family_len(b) == n && !memcmp(a->name, b->name, n);
}

static int put_value(cy_buf *out, double v)
{
    char num[40];
    if (isnan(v))
        snprintf(num, sizeof(num), "NaN");
    else if (isinf(v))
        snprintf(num, sizeof(num), v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 9e15)
        snprintf(num, sizeof(num), "%.0f", v);
    else
        snprintf(num, sizeof(num), "%.15g", v);
    return cy_buf_append(out, num, strlen(num));
}

static int put_str(cy_buf *out, const char *s)
{
    return cy_buf_append(out, s, strlen(s));
}

/* Help text escaped as the format wants: backslash and newline. */
static int put_help(cy_buf *out, const char *h)
{
    int rc = 0;
    for (; *h && !rc; h++) {
        if (*h == '\\')
            rc = put_str(out, "\\\\");
        else if (*h == '\n')
            rc = put_str(out, "\\n");
        else
            rc = cy_buf_append(out, h, 1);
    }
    return rc;
}

int cy_monitor_prometheus(cy_buf *out, const cy_snapshot *s, const char *(*help)(const char *name))
{
    bool *done = s->n ? cy_calloc(s->n, sizeof(bool)) : NULL;
    if (s->n && !done) return CY_ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < s->n && !rc; i++) {
        if (done[i]) continue;
        const cy_sample *f = &s->v[i];
        char fam[CY_SAMPLE_NAME_MAX];
        snprintf(fam, sizeof(fam), "%.*s", (int)family_len(f), f->name);
        const char *h = help ? help(fam) : NULL;
        rc |= put_str(out, "# HELP ");
        rc |= put_str(out, fam);
        rc |= put_str(out, " ");
        rc |= put_help(out, h ? h : fam);
        rc |= put_str(out, "\n# TYPE ");
        rc |= put_str(out, fam);
        rc |= put_str(out, " ");
        rc |= put_str(out, type_word(f->kind));
        rc |= put_str(out, "\n");
        for (size_t j = i; j < s->n && !rc; j++) {
            const cy_sample *x = &s->v[j];
            if (done[j] || !same_family(x, f)) continue;
            done[j] = true;
            rc |= put_str(out, x->name);
            if (x->labels[0]) {
                rc |= put_str(out, "{");
                rc |= put_str(out, x->labels);
                rc |= put_str(out, "}");
            }
            rc |= put_str(out, " ");
            rc |= put_value(out, x->value);
            rc |= put_str(out, "\n");
        }
    }
    cy_free(done);
    return rc ? CY_ENOMEM : 0;
}

/* ---- help for every series the monitor makes ---- */

static const struct {
    const char *name, *help;
} helps[] = {
    {"cyan_build_info", "the running binary: version and commit (always 1)"},
    {"cyan_monitor_up", "1 while the monitor process serves these figures"},
    {"cyan_supervisor_heartbeat_age_seconds", "seconds since the supervisor's last tick"},
    {"cyan_supervisor_start_timestamp_seconds", "when the supervisor started (a deploy)"},
    {"cyan_shard_up", "1 if the shard is running, 0 if down, starting or stopping"},
    {"cyan_shard_stale",
     "1 if the shard's figures are its last known ones: it is not running, or its heartbeat is "
     "older than watchdog_timeout"},
    {"cyan_shard_heartbeat_age_seconds", "seconds since the shard's loop last turned"},
    {"cyan_shard_last_heartbeat_timestamp_seconds", "when the shard's loop last turned"},
    {"cyan_shard_progress_total", "units of work the shard completed (packets, frames, calls)"},
    {"cyan_shard_last_progress_timestamp_seconds", "when the shard last completed work"},
    {"cyan_shard_backlog",
     "work owed to the shard: frames its peers sent and it has not acknowledged, and its own "
     "queued work"},
    {"cyan_shard_generation", "how many times the supervisor has spawned this shard"},
    {"cyan_shard_restarts_total", "shard restarts by reason (exit, signal, hung, stuck, canary)"},
    {"cyan_shard_start_timestamp_seconds", "when the running shard process began serving"},
    {"cyan_process_cpu_seconds_total", "user and system CPU time of a cyan process"},
    {"cyan_process_resident_memory_bytes", "resident memory of a cyan process"},
    {"cyan_monitor_evaluations_total", "snapshots the monitor has taken (one a second)"},
    {"cyan_canary_success_total",
     "canary attempts that walked the step's whole path (publish: a QoS 1 event to itself, "
     "acknowledged and received; call: a function call through the API, answered)"},
    {"cyan_canary_failure_total", "canary attempts that failed or passed canary_timeout"},
    {"cyan_canary_latency_seconds", "the last successful canary attempt's round trip"},
    {"cyan_canary_last_success_timestamp_seconds", "when the step last succeeded"},
    {"cyan_canary_up",
     "1 if every step of the shard's canary succeeded within canary_timeout + canary_interval"},
    {"cyan_alerts_firing", "alerts firing now, by name and component"},
};

static char help_buf[256];

/* Help of a series: the table, the metrics registry, or a companion's. */
static const char *series_help(const char *name)
{
    for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++)
        if (!strcmp(helps[i].name, name)) return helps[i].help;
    const char *suffix = "_last_change_timestamp_seconds";
    size_t n = strlen(name), k = strlen(suffix);
    if (n > k && !strcmp(name + n - k, suffix)) {
        snprintf(help_buf, sizeof(help_buf), "when %.*s last changed (seconds since the epoch)",
                 (int)(n - k), name);
        return help_buf;
    }
    for (size_t i = 0; i < CY_METRICS_N; i++) {
        char pn[96];
        cy_metrics_prom_name(i, pn, sizeof(pn));
        if (!strcmp(pn, name)) return cy_metric_defs[i].help;
    }
    for (size_t i = 0; i < CY_HISTS_N; i++) {
        char pn[96];
        cy_hists_prom_name(i, pn, sizeof(pn));
        if (!strcmp(pn, name)) return cy_hist_defs[i].help;
    }
    return NULL;
}

/* ---- the snapshot ---- */

/* Wall-clock ms of a monotonic ms (0 stays 0: never). */
static int64_t to_wall(int64_t mono_ms, int64_t off)
{
    return mono_ms ? mono_ms + off : 0;
}

/* Add a sample; with changed_ms < 0 its change time is tracked here: the
 * previous snapshot's if the value did not move, else now. */
static void add(mon *m, const char *name, const char *labels, int kind, double v,
                int64_t changed_ms, bool stale)
{
    if (changed_ms < 0) {
        const cy_sample *p = cy_snapshot_find(&m->prev, name, labels);
        changed_ms = p && p->value == v ? p->changed_ms : m->snap.now_ms;
    }
    int rc = cy_snapshot_add(&m->snap, name, labels, kind, v, changed_ms, stale);
    if (rc) cy_warn(NULL, "series %s{%s} not recorded: %s", name, labels ? labels : "",
                    cy_strerror(rc));
}

/* A series and its companion <base>_last_change_timestamp_seconds, where
 * base is the name without a trailing _total. */
static void add_tracked(mon *m, const char *name, const char *labels, int kind, double v,
                        int64_t changed_ms, bool stale)
{
    add(m, name, labels, kind, v, changed_ms, stale);
    const cy_sample *x = &m->snap.v[m->snap.n - 1];
    if (strcmp(x->name, name)) return; /* not added */
    int64_t changed = x->changed_ms;
    char comp[CY_SAMPLE_NAME_MAX];
    size_t n = strlen(name);
    if (n > 6 && !strcmp(name + n - 6, "_total")) n -= 6;
    if (snprintf(comp, sizeof(comp), "%.*s_last_change_timestamp_seconds", (int)n, name) >=
        (int)sizeof(comp))
        return;
    add(m, comp, labels, CY_SAMPLE_GAUGE, changed ? (double)changed / 1000.0 : 0, changed, stale);
}

/* CPU seconds and resident bytes of a process, from /proc/<pid>/stat. */
static bool proc_usage(int64_t pid, double *cpu_s, double *rss_bytes)
{
    if (pid <= 0) return false;
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%lld/stat", (long long)pid);
    FILE *f = fopen(path, "re");
    if (!f) return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the command (which may hold spaces) start past its ')'. */
    char *p = strrchr(buf, ')');
    if (!p) return false;
    unsigned long utime = 0, stime = 0;
    long rss = 0;
    /* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
     * cutime cstime priority nice threads itrealvalue starttime vsize rss */
    if (sscanf(p + 2,
               "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d %*u "
               "%*u %ld",
               &utime, &stime, &rss) != 3)
        return false;
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    *cpu_s = (double)(utime + stime) / (double)(tick > 0 ? tick : 100);
    *rss_bytes = (double)rss * (double)(page > 0 ? page : 4096);
    return true;
}

static void add_process(mon *m, const char *process, int shard, int64_t pid)
{
    double cpu, rss;
    if (!proc_usage(pid, &cpu, &rss)) return;
    char labels[64];
    if (shard >= 0)
        snprintf(labels, sizeof(labels), "process=\"%s\",shard=\"%d\"", process, shard);
    else
        snprintf(labels, sizeof(labels), "process=\"%s\"", process);
    add(m, "cyan_process_cpu_seconds_total", labels, CY_SAMPLE_COUNTER, cpu, -1, false);
    add(m, "cyan_process_resident_memory_bytes", labels, CY_SAMPLE_GAUGE, rss, -1, false);
}

static const char *const reason_words[CY_RESTART_NREASONS] = {"exit", "signal", "hung", "stuck",
                                                              "canary"};

static void snapshot_shard(mon *m, unsigned i, int64_t now_mono, int64_t off)
{
    const cy_sb_slot *sl = &m->sb.slots[i];
    char l[32];
    snprintf(l, sizeof(l), "shard=\"%u\"", i);
    int64_t state = cy_sb_load(&sl->state);
    int64_t beat = cy_sb_load(&sl->heartbeat_ms);
    int64_t age = beat ? now_mono - beat : 0;
    bool stale = state != CY_SHARD_RUNNING || age > (int64_t)m->live.watchdog_timeout;
    add_tracked(m, "cyan_shard_up", l, CY_SAMPLE_GAUGE, state == CY_SHARD_RUNNING, -1, false);
    add(m, "cyan_shard_stale", l, CY_SAMPLE_GAUGE, stale, -1, false);
    add(m, "cyan_shard_heartbeat_age_seconds", l, CY_SAMPLE_GAUGE, (double)age / 1000.0, -1,
        stale);
    add(m, "cyan_shard_last_heartbeat_timestamp_seconds", l, CY_SAMPLE_GAUGE,
        (double)to_wall(beat, off) / 1000.0, to_wall(beat, off), stale);
    int64_t pms = cy_sb_load(&sl->progress_ms);
    add(m, "cyan_shard_progress_total", l, CY_SAMPLE_COUNTER, (double)cy_sb_loadu(&sl->progress),
        to_wall(pms, off), stale);
    add(m, "cyan_shard_last_progress_timestamp_seconds", l, CY_SAMPLE_GAUGE,
        (double)to_wall(pms, off) / 1000.0, to_wall(pms, off), stale);
    add_tracked(m, "cyan_shard_backlog", l, CY_SAMPLE_GAUGE,
                (double)cy_scoreboard_backlog(&m->sb, i), -1, stale);
    add(m, "cyan_shard_generation", l, CY_SAMPLE_GAUGE, (double)cy_sb_load(&sl->generation), -1,
        false);
    int64_t started = cy_sb_load(&sl->started_ms);
    if (state == CY_SHARD_RUNNING && started)
        add(m, "cyan_shard_start_timestamp_seconds", l, CY_SAMPLE_GAUGE,
            (double)to_wall(started, off) / 1000.0, to_wall(started, off), false);
    for (int r = 0; r < CY_RESTART_NREASONS; r++) {
        char lr[64];
        snprintf(lr, sizeof(lr), "reason=\"%s\",shard=\"%u\"", reason_words[r], i);
        add_tracked(m, "cyan_shard_restarts_total", lr, CY_SAMPLE_COUNTER,
                    (double)cy_sb_load(&sl->sv_restarts[r]), -1, false);
    }
    uint64_t vals[CY_METRICS_N];
    cy_metrics_read_slot(sl, vals);
    for (size_t k = 0; k < CY_METRICS_N; k++) {
        char pn[96];
        cy_metrics_prom_name(k, pn, sizeof(pn));
        int kind = cy_metric_defs[k].kind == CY_METRIC_COUNTER ? CY_SAMPLE_COUNTER
                                                               : CY_SAMPLE_GAUGE;
        add_tracked(m, pn, l, kind, (double)vals[k], to_wall(cy_sb_load(&sl->changed_ms[k]), off),
                    stale);
    }
    cy_hists hs;
    cy_hists_read_slot(sl, &hs);
    for (size_t k = 0; k < CY_HISTS_N; k++) {
        const cy_hist *h = &hs.h[k];
        int64_t changed = to_wall(h->changed_ms, off);
        char base[48], name[CY_SAMPLE_NAME_MAX], lb[64];
        cy_hists_prom_name(k, base, sizeof(base));
        for (size_t b = 0; b < CY_HIST_BUCKETS; b++) {
            snprintf(name, sizeof(name), "%s_bucket", base);
            snprintf(lb, sizeof(lb), "le=\"%s\",shard=\"%u\"", cy_hist_le[b], i);
            add(m, name, lb, CY_SAMPLE_HISTOGRAM, (double)cy_hist_cumulative(h, b), changed, stale);
        }
        snprintf(name, sizeof(name), "%s_sum", base);
        add(m, name, l, CY_SAMPLE_HISTOGRAM, (double)h->sum_us / 1e6, changed, stale);
        snprintf(name, sizeof(name), "%s_count", base);
        add(m, name, l, CY_SAMPLE_HISTOGRAM, (double)cy_hist_count(h), changed, stale);
        snprintf(name, sizeof(name), "%s_last_change_timestamp_seconds", base);
        add(m, name, l, CY_SAMPLE_GAUGE, (double)changed / 1000.0, changed, stale);
    }
    if (m->canary[i]) {
        int64_t limit = (int64_t)m->live.canary_timeout + m->live.canary_interval;
        bool up = true;
        for (int st = 0; st < m->nsteps; st++) {
            const cy_canary_stats *cs = cy_canary_stats_of(m->canary[i], st);
            char ls[64];
            snprintf(ls, sizeof(ls), "shard=\"%u\",step=\"%s\"", i, cy_canary_step_name(st));
            add_tracked(m, "cyan_canary_success_total", ls, CY_SAMPLE_COUNTER,
                        (double)cs->success, cs->last_success_ms, false);
            add_tracked(m, "cyan_canary_failure_total", ls, CY_SAMPLE_COUNTER,
                        (double)cs->failure, cs->last_failure_ms, false);
            add(m, "cyan_canary_latency_seconds", ls, CY_SAMPLE_GAUGE,
                (double)cs->last_latency_us / 1e6, cs->last_success_ms, false);
            add(m, "cyan_canary_last_success_timestamp_seconds", ls, CY_SAMPLE_GAUGE,
                (double)cs->last_success_ms / 1000.0, cs->last_success_ms, false);
            if (!m->canary_ok[i][st] || now_mono - m->canary_ok[i][st] > limit) up = false;
        }
        add_tracked(m, "cyan_canary_up", l, CY_SAMPLE_GAUGE, up, -1, false);
    }
    if (state == CY_SHARD_RUNNING) add_process(m, "shard", (int)i, cy_sb_load(&sl->pid));
}

static void take_snapshot(mon *m)
{
    cy_snapshot t = m->prev;
    m->prev = m->snap;
    m->snap = t;
    int64_t now_mono = cy_mono_ms(), now_wall = cy_wall_ms();
    /* One offset, kept while the clocks agree within a second: computed
     * afresh each time it would jitter by a millisecond, and an unchanged
     * time would seem to move. A stepped wall clock resets it. */
    int64_t off = now_wall - now_mono;
    if (m->off && llabs(off - m->off) <= 1000)
        off = m->off;
    else
        m->off = off;
    cy_snapshot_reset(&m->snap, now_wall);
    m->evals++;
    char l[160];
    snprintf(l, sizeof(l), "commit=\"%.48s\",version=\"%.32s\"", cy_commit, CYAN_VERSION);
    add(m, "cyan_build_info", l, CY_SAMPLE_GAUGE, 1, -1, false);
    add(m, "cyan_monitor_up", NULL, CY_SAMPLE_GAUGE, 1, -1, false);
    add(m, "cyan_monitor_evaluations_total", NULL, CY_SAMPLE_COUNTER, (double)m->evals, now_wall,
        false);
    const cy_sb_header *h = m->sb.hdr;
    int64_t sbeat = cy_sb_load(&h->supervisor_heartbeat_ms);
    add(m, "cyan_supervisor_heartbeat_age_seconds", NULL, CY_SAMPLE_GAUGE,
        sbeat ? (double)(now_mono - sbeat) / 1000.0 : 0, -1, false);
    add(m, "cyan_supervisor_start_timestamp_seconds", NULL, CY_SAMPLE_GAUGE,
        (double)cy_sb_load(&h->started_wall_ms) / 1000.0, cy_sb_load(&h->started_wall_ms), false);
    for (unsigned i = 0; i < m->nshards; i++)
        snapshot_shard(m, i, now_mono, off);
    add_process(m, "supervisor", -1, cy_sb_load(&h->supervisor_pid));
    add_process(m, "monitor", -1, (int64_t)getpid());
}

/* ---- the timeline: the supervisor's events ---- */

/* The position in the supervisor's event ring is kept in a small file, so
 * a monitor that restarts within one run of the supervisor takes each
 * event once: "<supervisor start ms> <seq>". */
static void load_seq(mon *m)
{
    m->event_seq = 0;
    FILE *f = fopen(m->seq_path, "re");
    if (!f) return;
    long long started = 0;
    unsigned long long seq = 0;
    if (fscanf(f, "%lld %llu", &started, &seq) == 2 &&
        started == (long long)cy_sb_load(&m->sb.hdr->started_wall_ms))
        m->event_seq = seq;
    fclose(f);
}

static void save_seq(mon *m)
{
    char tmp[620];
    snprintf(tmp, sizeof(tmp), "%s.tmp", m->seq_path);
    FILE *f = fopen(tmp, "we");
    if (!f) return;
    fprintf(f, "%lld %llu\n", (long long)cy_sb_load(&m->sb.hdr->started_wall_ms),
            (unsigned long long)m->event_seq);
    if (fclose(f) == 0) rename(tmp, m->seq_path);
}

static void component_of(const mon *m, int64_t slot, char *out, size_t len)
{
    if (slot < 0)
        snprintf(out, len, "%s", "");
    else if ((uint64_t)slot == m->nshards)
        snprintf(out, len, "monitor");
    else
        snprintf(out, len, "shard-%lld", (long long)slot);
}

static void timeline_note(mon *m, int rc, const char *what)
{
    if (rc)
        cy_warn(NULL, "%s not recorded in monitor.db: %s (%s)", what, cy_strerror(rc),
                m->db ? cy_statusdb_errmsg(m->db) : "not open");
}

/* Take the supervisor's new events into the timeline. One that the ring
 * overwrote before we read it is lost (64 behind: a crash loop faster
 * than one a second); that is logged. */
static void ingest_events(mon *m)
{
    if (!m->db) return;
    uint64_t last = __atomic_load_n(&m->sb.hdr->event_seq, __ATOMIC_ACQUIRE);
    if (m->event_seq > last) m->event_seq = 0; /* a new run reuses the file */
    if (last > CY_SB_EVENTS && m->event_seq < last - CY_SB_EVENTS) {
        cy_warn(NULL, "%llu supervisor events overwritten before the timeline took them",
                (unsigned long long)(last - CY_SB_EVENTS - m->event_seq));
        m->event_seq = last - CY_SB_EVENTS;
    }
    bool moved = false;
    while (m->event_seq < last) {
        uint64_t seq = m->event_seq + 1;
        cy_sb_event e;
        if (!cy_scoreboard_event_get(&m->sb, seq, &e)) break; /* being written: next time */
        char comp[32], text[256], details[256];
        component_of(m, e.shard, comp, sizeof(comp));
        const char *who = (uint64_t)e.shard == m->nshards ? "monitor" : "shard";
        int rc = 0;
        switch (e.kind) {
        case CY_SB_EVENT_START: {
            char version[33], commit[49];
            snprintf(version, sizeof(version), "%s", m->sb.hdr->version_text);
            snprintf(commit, sizeof(commit), "%s", m->sb.hdr->commit);
            rc = cy_statusdb_record_start(m->db, NULL, version[0] ? version : "unknown",
                                          commit[0] ? commit : "unknown", e.wall_ms, NULL);
            timeline_note(m, rc, "the node's start");
            break;
        }
        case CY_SB_EVENT_RESTART:
            if (e.shard >= 0 && (uint64_t)e.shard < m->nshards)
                snprintf(text, sizeof(text), "shard %lld (pid %lld) replaced: %s",
                         (long long)e.shard, (long long)e.pid, e.text);
            else
                snprintf(text, sizeof(text), "%s (pid %lld) replaced: %s", who,
                         (long long)e.pid, e.text);
            snprintf(details, sizeof(details),
                     "{\"pid\":%lld,\"generation\":%lld,\"reason\":\"%s\"}", (long long)e.pid,
                     (long long)e.generation,
                     e.reason >= 0 && e.reason < CY_RESTART_NREASONS ? reason_words[e.reason]
                                                                      : "unknown");
            rc = cy_statusdb_timeline_append(m->db, CY_TL_RESTART, comp, text, details,
                                             e.wall_ms, NULL);
            timeline_note(m, rc, "a restart");
            break;
        case CY_SB_EVENT_STOP:
            snprintf(text, sizeof(text), "node stopping: %s", e.text);
            rc = cy_statusdb_timeline_append(m->db, CY_TL_NOTE, "", text, NULL, e.wall_ms, NULL);
            timeline_note(m, rc, "the node's stop");
            break;
        default: /* spawns: the restart before them says it all */
            break;
        }
        if (rc == CY_ENOSPC || rc == CY_EBUSY) break; /* try again next second */
        m->event_seq = seq;
        moved = true;
    }
    if (moved) save_seq(m);
}

static void reply_text(cy_http_req *req, unsigned status, const char *type, const char *body)
{
    cy_http_reply(req, status, type, body, strlen(body), NULL);
}

static void reply_error(cy_http_req *req, unsigned status, const char *code, const char *msg)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"error\":\"%s\",\"message\":\"%s\"}\n", code, msg);
    reply_text(req, status, NULL, body);
}

/* ---- alerts ---- */

static void fp_hex(uint64_t fp, char out[FP_LEN])
{
    snprintf(out, FP_LEN, "%016llx", (unsigned long long)fp);
}

static const cy_status_alert *as_status_alert(mon *m, const cy_alert *a, size_t k)
{
    static cy_status_alert x;
    fp_hex(a->fingerprint, m->fps[k]);
    memset(&x, 0, sizeof(x));
    x.fingerprint = m->fps[k];
    x.alertname = a->name;
    x.severity = cy_alert_severity_name(a->severity);
    x.component = a->component;
    x.shard = a->shard;
    x.summary = a->summary;
    x.evidence = a->evidence;
    x.since_ms = a->starts_at_ms ? a->starts_at_ms : a->active_ms;
    return &x;
}

/* Send alerts to the receivers (one Alertmanager body for all of them). */
static void send_alerts(mon *m, const cy_alert *const *v, size_t n)
{
    if (!m->notify || n == 0) return;
    char ext[160];
    snprintf(ext, sizeof(ext), "http://%s", m->live.ops_listen);
    char gen[200];
    snprintf(gen, sizeof(gen), "%s/status", ext);
    cy_alerts_webhook_opts o;
    memset(&o, 0, sizeof(o));
    o.receiver = "cyan";
    o.external_url = ext;
    o.generator_url = gen;
    char *body = NULL;
    size_t len = 0;
    int rc = cy_alerts_webhook_json(v, n, &o, &body, &len);
    if (rc == 0) {
        rc = cy_notify_send(m->notify, body, len);
        if (rc) cy_warn(NULL, "alert notification not queued: %s", cy_strerror(rc));
    } else if (rc != CY_EINVAL) {
        cy_warn(NULL, "alert notification not built: %s", cy_strerror(rc));
    }
    cy_free(body);
}

/* Evaluate the rules over this second's snapshot, then act on what
 * changed: the log, monitor.db (timeline, incidents), the receivers, the
 * scoreboard's list for `cyan status`, and the page's firing set. */
static void run_alerts(mon *m)
{
    if (!m->alerts) return;
    int64_t now = m->snap.now_ms;
    int rc = cy_alerts_eval(m->alerts, &m->snap, now);
    if (rc) cy_warn(NULL, "alert evaluation: %s", cy_strerror(rc));
    size_t nt = 0, na = 0;
    const cy_alert *t = cy_alerts_transitions(m->alerts, &nt);
    const cy_alert *act = cy_alerts_active(m->alerts, &na);
    if (na + nt > m->firing_cap) {
        size_t cap = (na + nt) * 2 + 8;
        cy_status_alert *f = cy_realloc(m->firing, cap * sizeof(*f));
        if (f) m->firing = f;
        char(*fp)[FP_LEN] = f ? cy_realloc(m->fps, cap * sizeof(*fp)) : NULL;
        if (fp) m->fps = fp;
        if (f && fp) m->firing_cap = cap;
    }
    const cy_alert **send = nt ? cy_calloc(nt, sizeof(*send)) : NULL;
    size_t nsend = 0;
    for (size_t i = 0; i < nt && i < m->firing_cap; i++) {
        const cy_alert *a = &t[i];
        bool firing = a->state == CY_ALERT_FIRING;
        if (firing)
            cy_log(a->severity == CY_ALERT_CRITICAL  ? CY_LOG_ERROR
                   : a->severity == CY_ALERT_WARNING ? CY_LOG_WARN
                                                     : CY_LOG_INFO,
                   NULL,
                   "alert %s firing (%s): %s; %s", a->name, a->component, a->summary,
                   a->evidence);
        else
            cy_info(NULL, "alert %s resolved (%s): %s", a->name, a->component, a->summary);
        if (send) send[nsend++] = a;
    }
    send_alerts(m, send, nsend);
    cy_free(send);
    /* Alertmanager's repeat: every firing alert again, now and then, so a
     * receiver that missed one (or the heartbeat rule's watcher) hears. */
    if (m->notify && na && now - m->repeat_ms >= REPEAT_MS) {
        const cy_alert **all = cy_calloc(na, sizeof(*all));
        size_t k = 0;
        for (size_t i = 0; all && i < na; i++)
            if (act[i].state == CY_ALERT_FIRING) all[k++] = &act[i];
        send_alerts(m, all, k);
        cy_free(all);
        m->repeat_ms = now;
    }
    /* The page's set, the scoreboard's text, and the alerts series. */
    char text[2048];
    size_t tl = 0;
    text[0] = '\0';
    m->nfiring = 0;
    for (size_t i = 0; i < na && i < m->firing_cap; i++) {
        const cy_alert *a = &act[i];
        if (a->state != CY_ALERT_FIRING) continue;
        m->firing[m->nfiring] = *as_status_alert(m, a, m->nfiring);
        /* Every second for every firing alert, not only when it begins: a
         * write that failed (a full disk, a lock) is retried this way, and
         * one already recorded writes nothing (statusdb.h). */
        if (m->db) {
            rc = cy_statusdb_alert_fired(m->db, &m->firing[m->nfiring], now, NULL, NULL);
            if (rc && a->starts_at_ms == now) timeline_note(m, rc, "an alert firing");
        }
        m->nfiring++;
        if (tl < sizeof(text))
            tl += (size_t)snprintf(text + tl, sizeof(text) - tl, "%s %s %s: %s\n",
                                   cy_alert_severity_name(a->severity), a->name, a->component,
                                   a->summary);
        char l[CY_ALERT_NAME_MAX + CY_ALERT_COMPONENT_MAX + 32];
        snprintf(l, sizeof(l), "alertname=\"%s\",component=\"%s\"", a->name, a->component);
        const cy_sample *prev = cy_snapshot_find(&m->snap, "cyan_alerts_firing", l);
        if (prev)
            ((cy_sample *)prev)->value += 1;
        else
            add(m, "cyan_alerts_firing", l, CY_SAMPLE_GAUGE, 1, now, false);
    }
    cy_scoreboard_alerts_set(&m->sb, text, cy_mono_ms());
    /* Resolutions after the firing ones: a shard's restart alert that
     * begins as its hang alert ends joins the same incident, so one
     * incident tells the hang, the restart and the recovery. */
    for (size_t i = 0; m->db && i < nt; i++) {
        if (t[i].state == CY_ALERT_FIRING) continue;
        char fp[FP_LEN];
        fp_hex(t[i].fingerprint, fp);
        cy_status_alert x;
        memset(&x, 0, sizeof(x));
        x.fingerprint = fp;
        x.alertname = t[i].name;
        x.severity = cy_alert_severity_name(t[i].severity);
        x.component = t[i].component;
        x.shard = t[i].shard;
        x.summary = t[i].summary;
        x.evidence = t[i].evidence;
        x.since_ms = t[i].starts_at_ms ? t[i].starts_at_ms : t[i].active_ms;
        rc = cy_statusdb_alert_resolved(m->db, &x, now, NULL, NULL);
        timeline_note(m, rc, "an alert resolved");
    }
    /* After a restart of the monitor: incidents whose alerts cleared while
     * it was down are closed once every rule had time to fire again. */
    if (m->db && m->reconcile_at_ms && now >= m->reconcile_at_ms) {
        size_t closed = 0;
        rc = cy_statusdb_alert_reconcile(m->db, m->firing, m->nfiring, now, &closed);
        if (rc == 0) {
            m->reconcile_at_ms = 0;
            if (closed) cy_info(NULL, "%zu alert(s) cleared while the monitor was down", closed);
        }
    }
}

static void alerts_json(json_t *arr, const cy_alert *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const cy_alert *a = &v[i];
        char fp[FP_LEN], t1[40] = "", t2[40] = "", t3[40] = "";
        fp_hex(a->fingerprint, fp);
        if (a->active_ms) cy_alert_time(a->active_ms, t1, sizeof(t1));
        if (a->starts_at_ms) cy_alert_time(a->starts_at_ms, t2, sizeof(t2));
        if (a->ends_at_ms) cy_alert_time(a->ends_at_ms, t3, sizeof(t3));
        json_t *labels = json_object();
        char ln[64], lv[256];
        size_t pos = 0;
        while (labels && cy_alert_labels_next(a->labels, &pos, ln, sizeof(ln), lv, sizeof(lv)))
            json_object_set_new(labels, ln, json_string(lv));
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:o, s:s, s:s, s:f, s:s?, s:s?, s:s?, s:s}",
                              "name", a->name, "state", cy_alert_state_name(a->state),
                              "severity", cy_alert_severity_name(a->severity), "component",
                              a->component, "shard", a->shard[0] ? a->shard : NULL, "labels",
                              labels ? labels : json_object(), "summary", a->summary, "evidence",
                              a->evidence, "value", isfinite(a->value) ? a->value : 0.0,
                              "activeAt", t1[0] ? t1 : NULL, "startsAt", t2[0] ? t2 : NULL,
                              "endsAt", t3[0] ? t3 : NULL, "fingerprint", fp);
        if (o) json_array_append_new(arr, o);
    }
}

/* GET /v1/alerts: active (pending and firing) and recently resolved. */
static void serve_alerts(mon *m, cy_http_req *req)
{
    size_t na = 0, nr = 0;
    const cy_alert *act = m->alerts ? cy_alerts_active(m->alerts, &na) : NULL;
    const cy_alert *res = m->alerts ? cy_alerts_resolved(m->alerts, &nr) : NULL;
    json_t *a = json_array(), *r = json_array();
    alerts_json(a, act, na);
    alerts_json(r, res, nr);
    char t[40];
    cy_alert_time(m->snap.now_ms, t, sizeof(t));
    json_t *o = json_pack("{s:s, s:o, s:o}", "evaluated_at", t, "active", a, "resolved", r);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) {
        reply_error(req, 500, "internal", "out of memory");
        return;
    }
    cy_http_reply(req, 200, NULL, text, strlen(text), NULL);
    free(text);
}

/* ---- the operations listener ---- */

/* The scopes (CY_SCOPE_* bits) of the request's bearer token, or 0 (none,
 * not valid, or expired). */
static unsigned token_scope(mon *m, cy_http_req *req)
{
    const char *a = cy_http_header(req, "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7) || !m->reg) return 0;
    const char *t = a + 7;
    cy_token_auth ta;
    if (cy_registry_token_check(m->reg, t, strlen(t), cy_wall_ms(), &ta)) return 0;
    return ta.scopes;
}

/* The page's model of now: components, the alerts firing, incidents (the
 * unresolved ones and the recent others) and the newest timeline events. */
static int serve_status(mon *m, cy_http_req *req, int (*render)(const cy_status_model *, cy_buf *),
                        const char *type)
{
    cy_incident_list inc = {0};
    cy_timeline_list tl = {0};
    int64_t now = cy_wall_ms();
    if (m->db) {
        int rc = cy_statusdb_incident_list(m->db, false, 50, &inc);
        if (rc) cy_warn(NULL, "incidents unreadable: %s", cy_strerror(rc));
        const char *since = cy_http_query(req, "since");
        int64_t since_ms = since ? strtoll(since, NULL, 10) : 0;
        rc = cy_statusdb_timeline_list(m->db, since_ms > 0 ? since_ms : 0, 200, &tl);
        if (rc) cy_warn(NULL, "timeline unreadable: %s", cy_strerror(rc));
    }
    cy_status_model model;
    memset(&model, 0, sizeof(model));
    model.page.name = "cyan";
    model.page.version = CYAN_VERSION;
    model.page.commit = cy_commit;
    model.page.created_ms = cy_sb_load(&m->sb.hdr->started_wall_ms);
    model.page.now_ms = now;
    model.page.refresh_s = 5;
    model.components = &m->comps;
    model.alerts = m->firing;
    model.nalerts = m->nfiring;
    model.incidents = inc.v;
    model.nincidents = inc.n;
    model.events = tl.v;
    model.nevents = tl.n;
    cy_buf out;
    cy_buf_init(&out);
    int rc = render(&model, &out);
    if (rc)
        reply_error(req, 500, "internal", "cannot render the page");
    else
        cy_http_reply(req, 200, type, (const char *)cy_buf_head(&out), cy_buf_size(&out), NULL);
    cy_buf_fini(&out);
    cy_incident_list_fini(&inc);
    cy_timeline_list_fini(&tl);
    return rc;
}

static unsigned status_of(int rc)
{
    switch (rc) {
    case CY_EINVAL: return 400;
    case CY_ENOENT: return 404;
    case CY_ENOSPC: return 507;
    case CY_EBUSY: return 503;
    default: return 500;
    }
}

/* POST /v1/incidents {name, component, status?, impact?, body}
 * POST /v1/incidents/{id}/updates {status, body} */
static void serve_incident_post(mon *m, cy_http_req *req, const char *rest)
{
    size_t len = 0;
    const uint8_t *body = cy_http_body(req, &len);
    json_error_t jerr;
    json_t *o = body ? json_loadb((const char *)body, len, 0, &jerr) : NULL;
    if (!o || !json_is_object(o)) {
        json_decref(o);
        reply_error(req, 400, "bad_request", "expected a JSON object");
        return;
    }
    if (!m->db) {
        json_decref(o);
        reply_error(req, 503, "unavailable", "monitor.db is not open (see the log)");
        return;
    }
    const char *name = json_string_value(json_object_get(o, "name"));
    const char *component = json_string_value(json_object_get(o, "component"));
    const char *status = json_string_value(json_object_get(o, "status"));
    const char *impact = json_string_value(json_object_get(o, "impact"));
    const char *text = json_string_value(json_object_get(o, "body"));
    int64_t now = cy_wall_ms(), id = 0, uid = 0;
    int st = status ? cy_incident_status_parse(status) : CY_INCIDENT_INVESTIGATING;
    int rc;
    char answer[160];
    if (!rest[0]) {
        int imp = impact ? cy_incident_impact_parse(impact) : CY_IMPACT_MINOR;
        if (!name || !text || st < 0 || imp < 0) {
            reply_error(req, 400, "bad_request",
                        "name and body are required; status investigating, "
                        "identified, monitoring or resolved; impact none, minor, major or "
                        "critical");
            json_decref(o);
            return;
        }
        if (component && !cy_status_component_find(&m->comps, component)) {
            reply_error(req, 400, "bad_request", "no such component on the status page");
            json_decref(o);
            return;
        }
        rc = cy_statusdb_incident_create(m->db, name, component, st, imp, text, now, &id);
        snprintf(answer, sizeof(answer), "{\"id\":\"%" PRId64 "\"}\n", id);
    } else {
        char *end = NULL;
        long long v = strtoll(rest, &end, 10);
        if (v <= 0 || !end || strcmp(end, "/updates")) {
            reply_error(req, 404, "not_found", "no such path on the operations listener");
            json_decref(o);
            return;
        }
        if (!status || st < 0 || !text) {
            reply_error(req, 400, "bad_request",
                        "status (investigating, identified, monitoring, resolved) and body are "
                        "required");
            json_decref(o);
            return;
        }
        id = v;
        rc = cy_statusdb_incident_update(m->db, id, st, text, now, &uid);
        snprintf(answer, sizeof(answer),
                 "{\"id\":\"%" PRId64 "\",\"incident_id\":\"%" PRId64 "\"}\n", uid, id);
    }
    json_decref(o);
    if (rc) {
        reply_error(req, status_of(rc), rc == CY_ENOENT ? "not_found" : "not_recorded",
                    rc == CY_EINVAL ? "a field is out of its limits (docs/operations.md)"
                                    : cy_strerror(rc));
        return;
    }
    reply_text(req, 201, NULL, answer);
}

static void serve_metrics(mon *m, cy_http_req *req)
{
    cy_buf out;
    cy_buf_init(&out);
    if (cy_monitor_prometheus(&out, &m->snap, series_help)) {
        cy_buf_fini(&out);
        reply_error(req, 500, "out_of_memory", "the monitor is out of memory");
        return;
    }
    cy_http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8",
                  (const char *)cy_buf_head(&out), cy_buf_size(&out), NULL);
    cy_buf_fini(&out);
}

static void on_request(void *ctx, cy_http_req *req)
{
    mon *m = ctx;
    const char *method = cy_http_method(req), *path = cy_http_path(req);
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool open_read = !strcmp(path, "/metrics") || !strcmp(path, "/status") ||
                     !strncmp(path, "/api/v2/", 8);
    if (!strcmp(path, "/-/healthy")) {
        reply_text(req, 200, "text/plain; charset=utf-8", "ok\n");
        return;
    }
    if (open_read && !m->live.ops_public && token_scope(m, req) == 0) {
        reply_error(req, 401, "unauthorized", "this listener requires an API token (ops_public)");
        return;
    }
    if (open_read && !get) {
        reply_error(req, 405, "method_not_allowed", "GET only");
        return;
    }
    if (!strcmp(path, "/metrics")) {
        serve_metrics(m, req);
        return;
    }
    if (!strcmp(path, "/status") || !strcmp(path, "/status/")) {
        serve_status(m, req, cy_status_render_html, "text/html; charset=utf-8");
        return;
    }
    if (!strcmp(path, "/api/v2/summary.json")) {
        serve_status(m, req, cy_status_render_summary, NULL);
        return;
    }
    if (!strcmp(path, "/api/v2/incidents.json")) {
        serve_status(m, req, cy_status_render_incidents, NULL);
        return;
    }
    if (!strcmp(path, "/api/v2/timeline.json")) {
        serve_status(m, req, cy_status_render_timeline, NULL);
        return;
    }
    if (!strcmp(path, "/v1/alerts")) {
        if (!get) {
            reply_error(req, 405, "method_not_allowed", "GET only");
            return;
        }
        if (token_scope(m, req) == 0) {
            reply_error(req, 401, "unauthorized", "an API token is required");
            return;
        }
        serve_alerts(m, req);
        return;
    }
    if (!strncmp(path, "/v1/incidents", 13) && (path[13] == '\0' || path[13] == '/')) {
        if (strcmp(method, "POST")) {
            reply_error(req, 405, "method_not_allowed",
                        "POST; the incidents are read at /api/v2/incidents.json");
            return;
        }
        if (!(token_scope(m, req) & CY_SCOPE_ADMIN)) {
            reply_error(req, 401, "unauthorized", "an API token with the admin scope is required");
            return;
        }
        serve_incident_post(m, req, path[13] ? path + 14 : "");
        return;
    }
    reply_error(req, 404, "not_found", "no such path on the operations listener");
}

/* ---- process plumbing (as a shard's: shard/main.c) ---- */

static void stop_canaries(mon *m);

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void stop(mon *m, const char *why)
{
    if (m->stopping) return;
    m->stopping = true;
    cy_info(NULL, "%s, shutting down", why);
    if (m->slot) cy_sb_store(&m->slot->state, CY_SHARD_STOPPING);
    if (m->http) cy_http_stop(m->http);
    stop_canaries(m);
    uv_close((uv_handle_t *)&m->sigterm, on_closed);
    uv_close((uv_handle_t *)&m->sigint, on_closed);
    uv_close((uv_handle_t *)&m->sighup, on_closed);
    uv_close((uv_handle_t *)&m->sigusr1, on_closed);
    uv_close((uv_handle_t *)&m->sigusr2, on_closed);
    uv_close((uv_handle_t *)&m->supervisor, on_closed);
    uv_close((uv_handle_t *)&m->beat, on_closed);
    uv_close((uv_handle_t *)&m->eval, on_closed);
}

static void on_signal(uv_signal_t *h, int signum)
{
    mon *m = h->data;
    if (signum == SIGTERM || signum == SIGINT) {
        stop(m, signum == SIGTERM ? "received SIGTERM" : "received SIGINT");
        return;
    }
    /* SIGHUP reaches the supervisor, which sends reloads over fd 4;
     * SIGUSR1/2 are log-rotation habits: nothing to do here. */
}

/* A reload from the supervisor: "name=value" lines. The monitor's own
 * settings shape the run; it applies log_level, and tls_cert and tls_key
 * for HTTPS on ops_listen, and ignores the rest. */
static void reload(mon *m, char *msg)
{
    for (char *line = msg, *nl; line && *line; line = nl) {
        nl = strchr(line, '\n');
        if (nl) *nl++ = '\0';
        if (!strncmp(line, "log_level=", 10)) {
            cy_log_level lvl;
            if (!cy_log_parse_level(line + 10, &lvl)) {
                cy_log_set_level(lvl);
                snprintf(m->live.log_level, sizeof(m->live.log_level), "%s", line + 10);
            }
        } else if (!strncmp(line, "tls_cert=", 9)) {
            snprintf(m->live.tls_cert, sizeof(m->live.tls_cert), "%s", line + 9);
        } else if (!strncmp(line, "tls_key=", 8)) {
            snprintf(m->live.tls_key, sizeof(m->live.tls_key), "%s", line + 8);
        }
    }
    /* The pair is read again at every reload, changed or not (the files
     * may be new under the same names). */
    if (m->http && m->live.tls_cert[0] && m->live.ops_tls) {
        char why[256];
        if (cy_http_tls_reload(m->http, m->live.tls_cert, m->live.tls_key, why, sizeof(why)))
            cy_error(NULL, "ops_listen: reload of the TLS certificate failed, the old one stays "
                           "in use: %s",
                     why);
        else
            cy_info(NULL, "ops_listen: TLS certificate %s loaded for new connections",
                    m->live.tls_cert);
    }
}

static void on_alloc_in(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    mon *m = h->data;
    (void)size;
    if (m->inlen + 1 >= sizeof(m->in)) m->inlen = 0;
    *buf = uv_buf_init(m->in + m->inlen, (unsigned)(sizeof(m->in) - 1 - m->inlen));
}

static void on_supervisor(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    mon *m = s->data;
    (void)buf;
    if (nread < 0) {
        stop(m, "supervisor gone");
        return;
    }
    m->inlen += (size_t)nread;
    m->in[m->inlen] = '\0';
    char *end;
    while ((end = strstr(m->in, "\n\n"))) {
        end[1] = '\0';
        reload(m, m->in);
        size_t used = (size_t)(end + 2 - m->in);
        memmove(m->in, end + 2, m->inlen - used + 1);
        m->inlen -= used;
    }
}

static void beat(mon *m)
{
    cy_sb_store(&m->slot->heartbeat_ms, cy_mono_ms());
    cy_sb_storeu(&m->slot->loops, cy_sb_loadu(&m->slot->loops) + 1);
    cy_sb_storeu(&m->slot->connections, m->http ? cy_http_connections(m->http) : 0);
}

static void on_beat(uv_timer_t *t)
{
    beat(t->data);
}

static void on_eval(uv_timer_t *t)
{
    mon *m = t->data;
    take_snapshot(m);
    ingest_events(m);
    run_alerts(m);
    cy_status_derive(&m->comps, m->firing, m->nfiring, m->snap.now_ms);
    /* The last uses of the tokens the ops listener checked (store.h). */
    if (m->reg) cy_registry_token_flush(m->reg, cy_wall_ms(), false);
    cy_sb_storeu(&m->slot->progress, m->evals);
    cy_sb_store(&m->slot->progress_ms, cy_mono_ms());
}

/* ---- canaries ---- */

/* A step's result: its success time, and the shard's "whole path walked"
 * time for the supervisor: the oldest of its steps' last successes. */
static void on_canary(void *ctx, const cy_canary_result *r)
{
    mon *m = ctx;
    if (r->shard >= m->nshards || r->step < 0 || r->step >= CY_CANARY_NSTEPS) return;
    if (!r->ok) {
        cy_debug(NULL, "canary of shard %u: %s failed: %s", r->shard, cy_canary_step_name(r->step),
                 r->error ? r->error : "?");
        return;
    }
    m->canary_ok[r->shard][r->step] = cy_mono_ms();
    int64_t oldest = INT64_MAX;
    for (int st = 0; st < m->nsteps; st++)
        if (m->canary_ok[r->shard][st] < oldest) oldest = m->canary_ok[r->shard][st];
    if (oldest > 0 && oldest != INT64_MAX)
        cy_sb_store(&m->sb.hdr->canary_ok_ms[r->shard], oldest);
}

/* One canary per shard: an internal device whose client id lands on it,
 * and one internal token for their calls (monitor/canary.h). Fresh
 * secrets at every start of the monitor. Off with canary_timeout = 0. */
static void start_canaries(mon *m)
{
    cy_sb_store(&m->sb.hdr->canary_timeout_ms, 0);
    if (!m->live.canary_timeout) {
        cy_info(NULL, "canaries off (canary_timeout = 0)");
        return;
    }
    bool calls = m->live.http_listen[0] && m->live.isolate_devices;
    m->nsteps = calls ? CY_CANARY_NSTEPS : 1;
    char tid[CY_TOKEN_ID_LEN + 1], token[CY_TOKEN_MAX + 1] = "";
    if (calls && cy_canary_token(m->reg, "canary", tid, token)) {
        cy_error(NULL, "canaries off: cannot make their API token");
        return;
    }
    unsigned started = 0;
    for (unsigned i = 0; i < m->nshards; i++) {
        char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1];
        if (cy_canary_device(m->reg, "canary", i, m->nshards, id, secret)) {
            cy_error(NULL, "canary of shard %u: cannot register its device", i);
            continue;
        }
        cy_canary_conf c;
        memset(&c, 0, sizeof(c));
        c.mqtt_addr = m->live.mqtt_listen;
        c.http_addr = m->live.http_listen;
        c.http_tls = m->live.tls_cert[0] && m->live.http_tls;
        c.device_id = id;
        c.secret = secret;
        c.token = token;
        c.shard = i;
        c.interval_ms = m->live.canary_interval;
        c.timeout_ms = m->live.canary_timeout < 1000 ? 1000 : m->live.canary_timeout;
        c.publish_only = !calls;
        int rc = cy_canary_new(&m->loop, &c, on_canary, m, &m->canary[i]);
        if (rc) {
            cy_error(NULL, "canary of shard %u: %s", i, cy_strerror(rc));
            m->canary[i] = NULL;
            continue;
        }
        started++;
    }
    if (!started) return;
    /* The supervisor replaces a shard whose canary has not walked the whole
     * path for this long (the same span as the CyanCanaryFailing alert). */
    cy_sb_store(&m->sb.hdr->canary_timeout_ms,
                (int64_t)m->live.canary_timeout + m->live.canary_interval);
    cy_info(NULL, "%u canar%s walking %s every %u ms", started, started == 1 ? "y" : "ies",
            calls ? "a QoS 1 event and a function call" : "a QoS 1 event (no API calls: "
                                                         "http_listen is off or "
                                                         "isolate_devices is false)",
            m->live.canary_interval);
}

static void stop_canaries(mon *m)
{
    cy_sb_store(&m->sb.hdr->canary_timeout_ms, 0); /* no verdicts from a stopped monitor */
    for (unsigned i = 0; i < m->nshards; i++)
        if (m->canary[i]) {
            cy_canary_stop(m->canary[i]);
            cy_canary_free(m->canary[i]);
            m->canary[i] = NULL;
        }
}

/* The rules (built in, then the alert_rules file) and the engine. A file
 * with an error was refused by `cyan` before the node started
 * (cy_monitor_check); if it broke since, the built-in rules run and the
 * log says why. */
static int start_alerts(mon *m)
{
    cy_alert_rules *rules = cy_calloc(1, sizeof(*rules));
    if (!rules) return 1;
    cy_alert_params p = {m->live.watchdog_timeout, m->live.canary_timeout,
                         m->live.canary_interval};
    cy_alert_rules_defaults(rules, &p);
    if (m->live.alert_rules[0]) {
        char err[256];
        if (cy_alert_rules_load(rules, m->live.alert_rules, err, sizeof(err))) {
            cy_error(NULL, "%s; running the built-in rules only", err);
            cy_alert_rules_defaults(rules, &p);
        }
    }
    int rc = cy_alerts_new(&m->alerts, rules, NULL);
    cy_free(rules);
    if (rc) {
        cy_error(NULL, "alert engine: %s", cy_strerror(rc));
        return 1;
    }
    /* Every rule has had time to fire again: the longest for or window,
     * plus a few evaluations. */
    m->reconcile_at_ms = cy_wall_ms() + 10 * 60 * 1000;
    return 0;
}

/* The receivers, from alert_webhooks: comma-separated URLs. */
static int start_notify(mon *m)
{
    char list[sizeof(m->live.alert_webhooks)];
    snprintf(list, sizeof(list), "%s", m->live.alert_webhooks);
    for (char *save = NULL, *u = strtok_r(list, ", ", &save); u && m->nurls < MAX_RECEIVERS;
         u = strtok_r(NULL, ", ", &save)) {
        m->urls[m->nurls] = cy_malloc(strlen(u) + 1);
        if (!m->urls[m->nurls]) return 1;
        strcpy(m->urls[m->nurls++], u);
    }
    if (!m->nurls) return 0;
    cy_notify_config c;
    memset(&c, 0, sizeof(c));
    c.urls = (const char *const *)m->urls;
    c.n_urls = m->nurls;
    c.user_agent = "cyan-monitor/" CYAN_VERSION;
    int rc = cy_notify_new(&m->notify, &m->loop, &c);
    if (rc) {
        cy_error(NULL, "alert_webhooks: %s", cy_strerror(rc));
        return 1;
    }
    cy_info(NULL, "alerts go to %zu receiver%s", m->nurls, m->nurls == 1 ? "" : "s");
    return 0;
}

int cy_monitor_check(const cy_config *cfg)
{
    cy_alert_rules *rules = cy_calloc(1, sizeof(*rules));
    if (!rules) return 1;
    int rc = 0;
    if (cfg->monitor && cfg->alert_rules[0]) {
        char err[256];
        cy_alert_params p = {cfg->watchdog_timeout, cfg->canary_timeout, cfg->canary_interval};
        cy_alert_rules_defaults(rules, &p);
        if (cy_alert_rules_load(rules, cfg->alert_rules, err, sizeof(err))) {
            cy_error(NULL, "alert_rules: %s", err);
            rc = 1;
        }
    }
    cy_free(rules);
    return rc;
}

int cy_monitor_run(const cy_config *cfg, unsigned index, uint64_t generation)
{
    mon *m = cy_calloc(1, sizeof(*m));
    if (!m) return 1;
    int status = 1;
    cy_log_set_tag("monitor");
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* as a shard: see shard/main.c */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    m->live = *cfg;
    m->index = index;
    cy_snapshot_init(&m->snap, cy_wall_ms());
    cy_snapshot_init(&m->prev, cy_wall_ms());
    char path[600];
    snprintf(path, sizeof(path), "%s/run/scoreboard", cfg->data_dir);
    if (cy_scoreboard_open(path, &m->sb)) {
        cy_error(NULL, "cannot open the scoreboard %s (is the supervisor running?)", path);
        goto out;
    }
    if ((int64_t)getppid() != cy_sb_load(&m->sb.hdr->supervisor_pid)) {
        cy_error(NULL, "my supervisor (pid %lld) is gone; exiting",
                 (long long)cy_sb_load(&m->sb.hdr->supervisor_pid));
        goto out;
    }
    m->nshards = (unsigned)m->sb.hdr->nshards;
    if (index != m->nshards) {
        cy_error(NULL, "index %u is not the monitor's slot (%u)", index, m->nshards);
        goto out;
    }
    m->slot = cy_scoreboard_monitor(&m->sb);
    cy_sb_store(&m->slot->pid, getpid());
    cy_sb_store(&m->slot->generation, (int64_t)generation);
    cy_sb_store(&m->slot->heartbeat_ms, cy_mono_ms());
    cy_sb_store(&m->slot->state, CY_SHARD_STARTING);
    snprintf(path, sizeof(path), "%s/registry.db", cfg->data_dir);
    if (cy_registry_open(path, &m->reg)) {
        cy_error(NULL, "cannot open %s", path);
        goto out;
    }
    snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, CY_STATUSDB_FILE);
    int dbrc = cy_statusdb_open(path, NULL, cy_wall_ms(), &m->db);
    if (dbrc) {
        /* The page, alerts and metrics work from memory without it. */
        cy_error(NULL, "%s: %s; incidents and the timeline are not kept", path,
                 cy_strerror(dbrc));
        m->db = NULL;
    }
    cy_status_components_init(&m->comps, (int)m->nshards, cy_wall_ms());
    if (start_alerts(m)) goto out;
    snprintf(m->seq_path, sizeof(m->seq_path), "%s/run/monitor-events", cfg->data_dir);
    load_seq(m);
    uv_loop_init(&m->loop);
    if (cfg->ops_listen[0]) {
        cy_http_limits lim;
        memset(&lim, 0, sizeof(lim));
        lim.max_connections = 256;
        lim.max_body_bytes = 16384;
        if (cfg->tls_cert[0] && cfg->ops_tls) {
            lim.tls_cert = cfg->tls_cert;
            lim.tls_key = cfg->tls_key;
        }
        int rc = cy_http_new(&m->loop, OPS_FD, &lim, on_request, NULL, m, &m->http);
        if (rc) {
            cy_error(NULL, "cannot serve ops_listen %s: %s", cfg->ops_listen,
                     cy_strerror(rc));
            goto out_loop;
        }
        close(OPS_FD);
    }
    if (start_notify(m)) goto out_loop;
    start_canaries(m);
    uv_signal_init(&m->loop, &m->sigterm);
    uv_signal_init(&m->loop, &m->sigint);
    uv_signal_init(&m->loop, &m->sighup);
    uv_signal_init(&m->loop, &m->sigusr1);
    uv_signal_init(&m->loop, &m->sigusr2);
    m->sigterm.data = m->sigint.data = m->sighup.data = m->sigusr1.data = m->sigusr2.data = m;
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    uv_signal_start(&m->sighup, on_signal, SIGHUP);
    uv_signal_start(&m->sigusr1, on_signal, SIGUSR1);
    uv_signal_start(&m->sigusr2, on_signal, SIGUSR2);
    uv_pipe_init(&m->loop, &m->supervisor, 0);
    m->supervisor.data = m;
    if (uv_pipe_open(&m->supervisor, SUPERVISOR_FD) == 0)
        uv_read_start((uv_stream_t *)&m->supervisor, on_alloc_in, on_supervisor);
    else
        cy_warn(NULL, "no supervisor pipe on fd 4; it will not notice its death");
    uv_timer_init(&m->loop, &m->beat);
    m->beat.data = m;
    uv_timer_start(&m->beat, on_beat, BEAT_MS, BEAT_MS);
    uv_timer_init(&m->loop, &m->eval);
    m->eval.data = m;
    uv_timer_start(&m->eval, on_eval, EVAL_MS, EVAL_MS);
    take_snapshot(m); /* /metrics has figures from the first request on */
    ingest_events(m);
    run_alerts(m);
    cy_status_derive(&m->comps, m->firing, m->nfiring, m->snap.now_ms);
    cy_sb_store(&m->slot->started_ms, cy_mono_ms());
    beat(m);
    cy_sb_store(&m->slot->state, CY_SHARD_RUNNING);
    cy_info(NULL, "pid %ld: watching %u shard%s%s%s", (long)getpid(), m->nshards,
            m->nshards == 1 ? "" : "s", cfg->ops_listen[0] ? ", serving on " : "",
            cfg->ops_listen);
    uv_run(&m->loop, UV_RUN_DEFAULT);
    status = 0;
out_loop:
    stop_canaries(m);
    if (m->notify) {
        cy_notify_close(m->notify, NULL, NULL);
        m->notify = NULL;
        uv_run(&m->loop, UV_RUN_NOWAIT);
    }
    if (m->http) {
        cy_http_stop(m->http);
        uv_run(&m->loop, UV_RUN_NOWAIT);
        cy_http_free(m->http);
    }
    uv_run(&m->loop, UV_RUN_NOWAIT);
    if (uv_loop_close(&m->loop)) cy_warn(NULL, "loop closed with handles open");
out:
    cy_registry_close(m->reg);
    cy_statusdb_close(m->db);
    cy_alerts_free(m->alerts);
    cy_free(m->firing);
    cy_free(m->fps);
    for (size_t i = 0; i < m->nurls; i++)
        cy_free(m->urls[i]);
    if (m->slot) cy_sb_store(&m->slot->state, CY_SHARD_DOWN);
    cy_scoreboard_close(&m->sb);
    cy_snapshot_fini(&m->snap);
    cy_snapshot_fini(&m->prev);
    cy_free(m);
    if (status == 0) cy_info(NULL, "monitor stopped");
    return status;
}
