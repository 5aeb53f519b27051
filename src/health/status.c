/* status: `cyan status` (a table, or --json) and the drills `cyan shard stop|cont|kill|spin|stall|drop`.
 *
 * Both are short-lived readers of a running node's scoreboard
 * (data_dir/run/scoreboard): they map it, read what the shards and the
 * supervisor last wrote, and never write to it. A scoreboard is only
 * believed while the supervisor named in its header is alive; the file
 * outlives the node (the supervisor marks everything DOWN and its own pid 0
 * when it stops), so the last state stays readable after a crash and the
 * table is printed then too, under an error that says the node is down.
 * `cyan status --json` prints the same as one JSON object, with every
 * shard's registry metrics and latency histograms (count, sum, cumulative
 * buckets) besides.
 *
 * The drills send the signal to the pid the supervisor spawned (sv_pid), so
 * an operator can rehearse the failures the watchdog exists for:
 * stop (SIGSTOP: hung), spin (loop busy forever: hung), stall (loop turns,
 * input ignored: stuck once work is owed), kill (SIGKILL: a crash), cont
 * (SIGCONT: undo stop before the watchdog acts), drop (it acknowledges
 * every message its clients publish and routes none: progress moves, only
 * a canary can tell). Spin, stall and drop are the
 * realtime signal CY_DRILL_SIGNAL sent with sigqueue and a value naming the
 * drill and the shard's generation (from its slot), which only this
 * command sends (health/watchdog.h says why not SIGUSR1/SIGUSR2).
 */
#include "health/supervisor.h"

#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "health/metrics.h"
#include "health/scoreboard.h"
#include "health/watchdog.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *state_name(int64_t st)
{
    switch (st) {
    case CY_SHARD_DOWN:
        return "DOWN";
    case CY_SHARD_STARTING:
        return "STARTING";
    case CY_SHARD_RUNNING:
        return "RUNNING";
    case CY_SHARD_STOPPING:
        return "STOPPING";
    default:
        return "?";
    }
}

/* A duration for people: 0.4s, 12.0s, 5m03s, 2h05m, 3d04h. */
static void fmt_age(char *out, size_t len, int64_t ms)
{
    if (ms < 0) ms = 0;
    int64_t s = ms / 1000;
    if (s < 60)
        snprintf(out, len, "%.1fs", (double)ms / 1000.0);
    else if (s < 3600)
        snprintf(out, len, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
    else if (s < 86400)
        snprintf(out, len, "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
    else
        snprintf(out, len, "%lldd%02lldh", (long long)(s / 86400), (long long)(s % 86400 / 3600));
}

static void scoreboard_path(const cy_config *cfg, char *out, size_t len)
{
    snprintf(out, len, "%s/run/scoreboard", cfg->data_dir);
}

/* Open the scoreboard, saying why not on stderr. 0 or 1 (exit status). */
static int open_board(const cy_config *cfg, cy_scoreboard *sb, char *path, size_t len)
{
    scoreboard_path(cfg, path, len);
    int rc = cy_scoreboard_open(path, sb);
    if (rc == CY_ENOENT) {
        fprintf(stderr, "cyan: not running: no scoreboard at %s (is data_dir = %s right?)\n", path,
                cfg->data_dir);
        return 1;
    }
    if (rc == CY_EINVAL) {
        fprintf(stderr, "cyan: %s is not a scoreboard this cyan can read\n", path);
        return 1;
    }
    if (rc) {
        fprintf(stderr, "cyan: cannot read %s: %s\n", path, cy_strerror(rc));
        return 1;
    }
    return 0;
}

static void print_table(const cy_scoreboard *sb, int64_t now)
{
    /* restarts: counted by reason, exit/signal/hung/stuck/canary; the
     * monitor's row (its slot after the shards') when it runs or ran. */
    const cy_sb_slot *mon = cy_scoreboard_monitor(sb);
    unsigned rows = sb->hdr->nshards + (cy_sb_load(&mon->generation) > 0 ? 1 : 0);
    printf("%-7s %-7s %-8s %4s %7s %6s %12s %8s %6s %7s  %-22s %s\n", "shard", "pid", "state",
           "gen", "up", "beat", "progress", "backlog", "conns", "canary",
           "exit/sig/hung/stuck/can", "last restart");
    for (unsigned i = 0; i < rows; i++) {
        bool is_mon = i == sb->hdr->nshards;
        const cy_sb_slot *sl = &sb->slots[i];
        int64_t st = cy_sb_load(&sl->state);
        int64_t pid = cy_sb_load(&sl->sv_pid);
        if (!pid && st != CY_SHARD_DOWN) pid = cy_sb_load(&sl->pid);
        char pidbuf[24] = "-", up[32] = "-", beat[32] = "-", restarts[48], last[200] = "-";
        if (pid) snprintf(pidbuf, sizeof(pidbuf), "%lld", (long long)pid);
        int64_t started = cy_sb_load(&sl->started_ms);
        if (st != CY_SHARD_DOWN) {
            if (started > 0) fmt_age(up, sizeof(up), now - started);
            fmt_age(beat, sizeof(beat), now - cy_sb_load(&sl->heartbeat_ms));
        }
        snprintf(restarts, sizeof(restarts), "%lld/%lld/%lld/%lld/%lld",
                 (long long)cy_sb_load(&sl->sv_restarts[CY_RESTART_EXIT]),
                 (long long)cy_sb_load(&sl->sv_restarts[CY_RESTART_SIGNAL]),
                 (long long)cy_sb_load(&sl->sv_restarts[CY_RESTART_HUNG]),
                 (long long)cy_sb_load(&sl->sv_restarts[CY_RESTART_STUCK]),
                 (long long)cy_sb_load(&sl->sv_restarts[CY_RESTART_CANARY]));
        /* The canary: when it last walked the whole path (monitor: "-"). */
        char canary[32] = "-";
        int64_t ok = is_mon ? 0 : cy_sb_load(&sb->hdr->canary_ok_ms[i]);
        if (!is_mon && cy_sb_load(&sb->hdr->canary_timeout_ms) > 0) {
            if (ok > 0)
                fmt_age(canary, sizeof(canary), now - ok);
            else
                snprintf(canary, sizeof(canary), "never");
        }
        char label[16];
        if (is_mon)
            snprintf(label, sizeof(label), "monitor");
        else
            snprintf(label, sizeof(label), "%u", i);
        int64_t when = cy_sb_load(&sl->sv_last_restart_ms);
        if (when > 0) {
            char reason[sizeof(sl->sv_last_reason)], ago[32];
            memcpy(reason, (const char *)sl->sv_last_reason, sizeof(reason));
            reason[sizeof(reason) - 1] = '\0';
            fmt_age(ago, sizeof(ago), now - when);
            int64_t backoff = cy_sb_load(&sl->sv_backoff_ms);
            if (st == CY_SHARD_DOWN && backoff > 0)
                snprintf(last, sizeof(last), "%s ago: %s (respawn after %.1fs)", ago, reason,
                         (double)backoff / 1000.0);
            else
                snprintf(last, sizeof(last), "%s ago: %s", ago, reason);
        }
        printf("%-7s %-7s %-8s %4lld %7s %6s %12llu %8llu %6llu %7s  %-22s %s\n", label, pidbuf,
               state_name(st), (long long)cy_sb_load(&sl->generation), up, beat,
               (unsigned long long)cy_sb_loadu(&sl->progress),
               (unsigned long long)cy_scoreboard_backlog(sb, i),
               (unsigned long long)cy_sb_loadu(&sl->connections), canary, restarts, last);
    }
}

/* The monitor's active alerts, as it last wrote them. */
static void print_alerts(const cy_scoreboard *sb, int64_t now)
{
    const cy_sb_slot *mon = cy_scoreboard_monitor(sb);
    if (cy_sb_load(&mon->generation) == 0) {
        printf("\nalerts: no monitor in this run (monitor = false)\n");
        return;
    }
    char text[sizeof(sb->hdr->alerts_text)];
    int64_t when = 0;
    if (!cy_scoreboard_alerts_get(sb, text, sizeof(text), &when) || when == 0) {
        printf("\nalerts: not evaluated yet\n");
        return;
    }
    char ago[32];
    fmt_age(ago, sizeof(ago), now - when);
    if (!text[0]) {
        printf("\nalerts: none firing (evaluated %s ago)\n", ago);
        return;
    }
    printf("\nalerts firing (evaluated %s ago):\n%s", ago, text);
    if (text[strlen(text) - 1] != '\n') printf("\n");
}

/* The node's totals of every metric in the registry, summed over the
 * RUNNING shards (a shard that is down or starting has no live values; its
 * counters start again at 0 when it is respawned). */
static void print_totals(const cy_scoreboard *sb)
{
    uint64_t v[CY_METRICS_N];
    unsigned n = cy_metrics_node_totals(sb, 0, NULL, v);
    int width = 0;
    for (size_t i = 0; i < CY_METRICS_N; i++) {
        int l = (int)strlen(cy_metric_defs[i].name);
        if (l > width) width = l;
    }
    printf("\nnode totals over %u of %llu shards (RUNNING):\n", n,
           (unsigned long long)sb->hdr->nshards);
    for (size_t i = 0; i < CY_METRICS_N; i++) {
        const cy_metric_def *d = &cy_metric_defs[i];
        printf("%-*s %14llu %-13s %s\n", width, d->name, (unsigned long long)v[i], d->unit,
               d->kind == CY_METRIC_GAUGE ? "gauge" : "counter");
    }
}

int cy_status_print(const cy_config *cfg)
{
    char path[640];
    cy_scoreboard sb;
    if (open_board(cfg, &sb, path, sizeof(path))) return 1;
    int64_t now = cy_mono_ms();
    int64_t age;
    bool alive = cy_watchdog_supervisor_alive(&sb, &age);
    int64_t pid = cy_sb_load(&sb.hdr->supervisor_pid);
    int rc = 0;
    if (!pid) {
        fprintf(stderr, "cyan: not running: the supervisor of %s has stopped; last state:\n", path);
        rc = 1;
    } else if (!alive) {
        fprintf(stderr,
                "cyan: not running: supervisor pid %lld is gone without stopping "
                "(crashed or killed); last state:\n",
                (long long)pid);
        rc = 1;
    } else {
        char agebuf[32];
        fmt_age(agebuf, sizeof(agebuf), age);
        printf("supervisor pid %lld, heartbeat %s ago, watchdog_timeout %lld ms, %llu shards\n",
               (long long)pid, agebuf, (long long)cy_sb_load(&sb.hdr->watchdog_timeout_ms),
               (unsigned long long)sb.hdr->nshards);
        if (age > 5000)
            fprintf(stderr,
                    "cyan: warning: the supervisor has not beaten for %s: it may be "
                    "hung\n",
                    agebuf);
    }
    print_table(&sb, now);
    print_alerts(&sb, now);
    print_totals(&sb);
    cy_scoreboard_close(&sb);
    return rc;
}

/* ---- cyan status --json ---- */

/* s as a JSON string: quotes, backslashes and control bytes escaped
 * (the scoreboard's texts are ours, ASCII). */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* {"<metric>": value, ...} in registry order. */
static void json_metrics(FILE *f, const uint64_t v[CY_METRICS_N])
{
    fputc('{', f);
    for (size_t i = 0; i < CY_METRICS_N; i++)
        fprintf(f, "%s\"%s\": %llu", i ? ", " : "", cy_metric_defs[i].name,
                (unsigned long long)v[i]);
    fputc('}', f);
}

/* One shard's histograms: {"<name>": {"count", "sum_seconds",
 * "buckets": {"<le>": cumulative count, ..., "+Inf": count},
 * "last_observed_ms_ago": ms or null}, ...}. */
static void json_hists(FILE *f, const cy_sb_slot *sl, int64_t now)
{
    cy_hists h;
    cy_hists_read_slot(sl, &h);
    fputc('{', f);
    for (size_t i = 0; i < CY_HISTS_N; i++) {
        const cy_hist *x = &h.h[i];
        fprintf(f, "%s\"%s\": {\"count\": %llu, \"sum_seconds\": %.6f, \"buckets\": {",
                i ? ", " : "", cy_hist_defs[i].name, (unsigned long long)cy_hist_count(x),
                (double)x->sum_us / 1e6);
        for (size_t k = 0; k < CY_HIST_BUCKETS; k++)
            fprintf(f, "%s\"%s\": %llu", k ? ", " : "", cy_hist_le[k],
                    (unsigned long long)cy_hist_cumulative(x, k));
        if (x->changed_ms > 0)
            fprintf(f, "}, \"last_observed_ms_ago\": %lld}", (long long)(now - x->changed_ms));
        else
            fputs("}, \"last_observed_ms_ago\": null}", f);
    }
    fputc('}', f);
}

static void json_shard(FILE *f, const cy_scoreboard *sb, unsigned i, int64_t now)
{
    static const char *const reasons[CY_RESTART_NREASONS] = {"exit", "signal", "hung", "stuck",
                                                             "canary"};
    const cy_sb_slot *sl = &sb->slots[i];
    int64_t st = cy_sb_load(&sl->state);
    int64_t pid = cy_sb_load(&sl->sv_pid);
    if (!pid && st != CY_SHARD_DOWN) pid = cy_sb_load(&sl->pid);
    fprintf(f, "{\"shard\": %u, \"state\": \"%s\", \"pid\": %lld, \"generation\": %lld, ", i,
            state_name(st), (long long)pid, (long long)cy_sb_load(&sl->generation));
    int64_t beat = cy_sb_load(&sl->heartbeat_ms);
    if (st != CY_SHARD_DOWN && beat > 0)
        fprintf(f, "\"heartbeat_age_ms\": %lld, ", (long long)(now - beat));
    else
        fputs("\"heartbeat_age_ms\": null, ", f);
    /* accepting: its listeners take clients (every peer was ready, or its
     * wait for them ended); the monitor never accepts */
    fprintf(f, "\"accepting\": %s, ",
            st == CY_SHARD_RUNNING && cy_sb_load(&sl->accepting) ? "true" : "false");
    fprintf(f, "\"progress\": %llu, \"backlog\": %llu, \"connections\": %llu, \"restarts\": {",
            (unsigned long long)cy_sb_loadu(&sl->progress),
            (unsigned long long)cy_scoreboard_backlog(sb, i),
            (unsigned long long)cy_sb_loadu(&sl->connections));
    for (int r = 0; r < CY_RESTART_NREASONS; r++)
        fprintf(f, "%s\"%s\": %lld", r ? ", " : "", reasons[r],
                (long long)cy_sb_load(&sl->sv_restarts[r]));
    fputs("}, \"last_restart_reason\": ", f);
    if (cy_sb_load(&sl->sv_last_restart_ms) > 0) {
        char reason[sizeof(sl->sv_last_reason)];
        memcpy(reason, (const char *)sl->sv_last_reason, sizeof(reason));
        reason[sizeof(reason) - 1] = '\0';
        json_str(f, reason);
    } else {
        fputs("null", f);
    }
    uint64_t v[CY_METRICS_N];
    cy_metrics_read_slot(sl, v);
    fputs(", \"metrics\": ", f);
    json_metrics(f, v);
    fputs(", \"histograms\": ", f);
    json_hists(f, sl, now);
    fputc('}', f);
}

int cy_status_json(const cy_config *cfg)
{
    char path[640];
    cy_scoreboard sb;
    if (open_board(cfg, &sb, path, sizeof(path))) return 1;
    int64_t now = cy_mono_ms();
    int64_t age = 0;
    bool alive = cy_watchdog_supervisor_alive(&sb, &age);
    int64_t pid = cy_sb_load(&sb.hdr->supervisor_pid);
    if (!alive)
        fprintf(stderr, "cyan: not running: %s; last state follows\n",
                pid ? "the supervisor is gone without stopping" : "the supervisor has stopped");
    FILE *f = stdout;
    fprintf(f, "{\"running\": %s, \"supervisor_pid\": %lld, ", alive ? "true" : "false",
            (long long)pid);
    if (alive)
        fprintf(f, "\"supervisor_heartbeat_age_ms\": %lld, ", (long long)age);
    else
        fputs("\"supervisor_heartbeat_age_ms\": null, ", f);
    fprintf(f, "\"watchdog_timeout_ms\": %lld, \"nshards\": %llu, \"shards\": [",
            (long long)cy_sb_load(&sb.hdr->watchdog_timeout_ms),
            (unsigned long long)sb.hdr->nshards);
    for (unsigned i = 0; i < sb.hdr->nshards; i++) {
        if (i) fputs(", ", f);
        json_shard(f, &sb, i, now);
    }
    uint64_t v[CY_METRICS_N];
    unsigned n = cy_metrics_node_totals(&sb, 0, NULL, v);
    fprintf(f, "], \"totals_shards\": %u, \"totals\": ", n);
    json_metrics(f, v);
    fputs("}\n", f);
    cy_scoreboard_close(&sb);
    return alive ? 0 : 1;
}

static int drill_usage(void)
{
    fprintf(stderr, "usage: cyan shard stop|cont|kill|spin|stall|drop INDEX\n"
                    "  stop   SIGSTOP: the shard freezes (the watchdog sees no heartbeat)\n"
                    "  cont   SIGCONT: undo stop\n"
                    "  kill   SIGKILL: a crash\n"
                    "  spin   its loop busy-loops forever (no heartbeat)\n"
                    "  stall  it ignores input but keeps beating (no progress)\n"
                    "  drop   it acknowledges what its clients publish and routes nothing\n"
                    "         (progress moves; its canary finds it; those messages are lost)\n");
    return 2;
}

int cy_shard_drill(const cy_config *cfg, const char *what, const char *index)
{
    static const struct {
        const char *word;
        int sig; /* 0: the drill signal, with the value for `drill` */
        int drill;
        const char *name;
    } acts[] = {
        {"stop", SIGSTOP, 0, "SIGSTOP"},
        {"cont", SIGCONT, 0, "SIGCONT"},
        {"kill", SIGKILL, 0, "SIGKILL"},
        {"spin", 0, CY_DRILL_SPIN, "the spin drill"},
        {"stall", 0, CY_DRILL_STALL, "the stall drill"},
        {"drop", 0, CY_DRILL_DROP, "the drop drill"},
    };
    int a = -1;
    for (int k = 0; what && k < (int)(sizeof(acts) / sizeof(acts[0])); k++)
        if (!strcmp(what, acts[k].word)) a = k;
    if (a < 0) return drill_usage();
    unsigned long idx = 0;
    if (!index || !*index || strlen(index) > 3) return drill_usage();
    for (const char *p = index; *p; p++) {
        if (*p < '0' || *p > '9') return drill_usage();
        idx = idx * 10 + (unsigned long)(*p - '0');
    }
    char path[640];
    cy_scoreboard sb;
    if (open_board(cfg, &sb, path, sizeof(path))) return 1;
    int rc = 1;
    if (!cy_watchdog_supervisor_alive(&sb, NULL)) {
        fprintf(stderr, "cyan: not running: no live supervisor in %s\n", path);
        goto out;
    }
    if (idx >= sb.hdr->nshards) {
        fprintf(stderr, "cyan: no shard %lu: this node runs %llu (0..%llu)\n", idx,
                (unsigned long long)sb.hdr->nshards, (unsigned long long)sb.hdr->nshards - 1);
        rc = 2;
        goto out;
    }
    const cy_sb_slot *sl = &sb.slots[idx];
    int64_t pid = cy_sb_load(&sl->sv_pid);
    if (!pid) {
        fprintf(stderr, "cyan: shard %lu is down (waiting to be respawned)\n", idx);
        goto out;
    }
    int sent;
    if (acts[a].sig) {
        sent = kill((pid_t)pid, acts[a].sig);
    } else {
        union sigval v;
        memset(&v, 0, sizeof(v));
        v.sival_int = cy_drill_token(cy_sb_load(&sl->generation), acts[a].drill);
        sent = sigqueue((pid_t)pid, CY_DRILL_SIGNAL, v);
    }
    if (sent != 0) {
        fprintf(stderr, "cyan: shard %lu (pid %lld): %s: %s\n", idx, (long long)pid, acts[a].name,
                strerror(errno));
        goto out;
    }
    printf("shard %lu (pid %lld): sent %s\n", idx, (long long)pid, acts[a].name);
    rc = 0;
out:
    cy_scoreboard_close(&sb);
    return rc;
}
