/* metrics: the registry table, node totals from the scoreboard, and the
 * Prometheus text exposition.
 *
 * The table is CY_METRICS(X) expanded once; every consumer walks it by
 * index, so a scoreboard word, a `$SYS` topic and a Prometheus family are
 * the same metric by construction. Totals read other shards' slots with
 * relaxed loads: each word is whole, the set is not one instant, which is
 * what a sum of independent counters can promise anyway.
 *
 * Prometheus text format 0.0.4: `# HELP name text` (backslash and newline
 * escaped), `# TYPE name counter|gauge`, then `name{labels} value` lines,
 * every family's samples together. Counters are named with `_total` (the
 * naming convention); units are not put in names because they are not base
 * units (the family name already says what is counted).
 *
 * Latency histograms (CY_HISTS) are kept by the shard as per-bucket counts
 * and a sum in microseconds, the words of its slot; rendering them as
 * Prometheus histograms (cumulative `_bucket{le}`, `_sum` in seconds,
 * `_count`) is the monitor's, from cy_hist_cumulative and cy_hist_le.
 */
#include "health/metrics.h"

#include "core/cy_err.h"

#include <stdio.h>
#include <string.h>

const cy_metric_def cy_metric_defs[CY_METRICS_N] = {
#define CY_METRIC_DEF_(name, kind, unit, help) {#name, kind, unit, help},
    CY_METRICS(CY_METRIC_DEF_)
#undef CY_METRIC_DEF_
};

int cy_metrics_find(const char *name)
{
    if (!name) return -1;
    for (int i = 0; i < CY_METRICS_N; i++)
        if (!strcmp(cy_metric_defs[i].name, name)) return i;
    return -1;
}

void cy_metrics_publish(cy_sb_slot *slot, const cy_counters *c, int64_t now_ms)
{
    for (size_t i = 0; i < CY_METRICS_N; i++) {
        if (cy_sb_loadu(&slot->counters[i]) == c->v[i]) continue;
        cy_sb_storeu(&slot->counters[i], c->v[i]);
        cy_sb_store(&slot->changed_ms[i], now_ms);
    }
}

void cy_metrics_read_slot(const cy_sb_slot *slot, uint64_t out[CY_METRICS_N])
{
    for (size_t i = 0; i < CY_METRICS_N; i++)
        out[i] = cy_sb_loadu(&slot->counters[i]);
}

/* Shard j's part of the totals: own for self, its slot if RUNNING, else
 * nothing (NULL). vals is scratch for a slot's words. */
static const uint64_t *shard_values(const cy_scoreboard *sb, unsigned j, unsigned self,
                                    const cy_counters *own, uint64_t *vals)
{
    if (own && j == self) return own->v;
    const cy_sb_slot *s = &sb->slots[j];
    if (cy_sb_load(&s->state) != CY_SHARD_RUNNING) return NULL;
    cy_metrics_read_slot(s, vals);
    return vals;
}

static unsigned board_shards(const cy_scoreboard *sb)
{
    uint64_t n = sb->hdr->nshards;
    return n > CY_SB_MAX_SHARDS ? CY_SB_MAX_SHARDS : (unsigned)n;
}

unsigned cy_metrics_node_totals(const cy_scoreboard *sb, unsigned self, const cy_counters *own,
                                uint64_t out[CY_METRICS_N])
{
    memset(out, 0, CY_METRICS_N * sizeof(uint64_t));
    if (!sb || !sb->hdr) {
        if (!own) return 0;
        memcpy(out, own->v, CY_METRICS_N * sizeof(uint64_t));
        return 1;
    }
    unsigned summed = 0, n = board_shards(sb);
    for (unsigned j = 0; j < n; j++) {
        uint64_t vals[CY_METRICS_N];
        const uint64_t *v = shard_values(sb, j, self, own, vals);
        if (!v) continue;
        summed++;
        for (size_t i = 0; i < CY_METRICS_N; i++)
            out[i] += v[i];
    }
    return summed;
}

uint64_t cy_metrics_node_total(const cy_scoreboard *sb, unsigned self, const cy_counters *own,
                               size_t metric)
{
    if (metric >= CY_METRICS_N) return 0;
    if (!sb || !sb->hdr) return own ? own->v[metric] : 0;
    uint64_t total = 0;
    unsigned n = board_shards(sb);
    for (unsigned j = 0; j < n; j++) {
        if (own && j == self)
            total += own->v[metric];
        else if (cy_sb_load(&sb->slots[j].state) == CY_SHARD_RUNNING)
            total += cy_sb_loadu(&sb->slots[j].counters[metric]);
    }
    return total;
}

void cy_metrics_prom_name(size_t i, char *out, size_t len)
{
    const cy_metric_def *d = &cy_metric_defs[i];
    size_t nl = strlen(d->name);
    bool has_total = nl >= 6 && !strcmp(d->name + nl - 6, "_total");
    snprintf(out, len, "cyan_%s%s", d->name,
             d->kind == CY_METRIC_COUNTER && !has_total ? "_total" : "");
}

static int put(cy_buf *out, const char *s)
{
    return cy_buf_append(out, s, strlen(s));
}

/* HELP text escapes backslash and line feed (the exposition format). */
static int put_help(cy_buf *out, const char *s)
{
    int rc = 0;
    for (; *s && !rc; s++) {
        if (*s == '\\')
            rc = put(out, "\\\\");
        else if (*s == '\n')
            rc = put(out, "\\n");
        else
            rc = cy_buf_append(out, s, 1);
    }
    return rc;
}

int cy_metrics_prometheus(cy_buf *out, const uint64_t *values, size_t nsets,
                          const unsigned *shards)
{
    if (!shards && nsets > 1) nsets = 1; /* unlabelled samples of one family must be one */
    for (size_t i = 0; i < CY_METRICS_N; i++) {
        const cy_metric_def *d = &cy_metric_defs[i];
        char name[80], line[160];
        cy_metrics_prom_name(i, name, sizeof(name));
        snprintf(line, sizeof(line), "# HELP %s ", name);
        if (put(out, line) || put_help(out, d->help)) return CY_ENOMEM;
        if (d->unit[0] && (put(out, " (") || put_help(out, d->unit) || put(out, ")")))
            return CY_ENOMEM;
        snprintf(line, sizeof(line), "\n# TYPE %s %s\n", name,
                 d->kind == CY_METRIC_COUNTER ? "counter" : "gauge");
        if (put(out, line)) return CY_ENOMEM;
        for (size_t k = 0; k < nsets; k++) {
            unsigned long long v = (unsigned long long)values[k * CY_METRICS_N + i];
            if (shards)
                snprintf(line, sizeof(line), "%s{shard=\"%u\"} %llu\n", name, shards[k], v);
            else
                snprintf(line, sizeof(line), "%s %llu\n", name, v);
            if (put(out, line)) return CY_ENOMEM;
        }
    }
    return 0;
}

/* ---- latency histograms ---- */

const cy_hist_def cy_hist_defs[CY_HISTS_N] = {
#define CY_HIST_DEF_(name, index, help) [index] = {#name, help},
    CY_HISTS(CY_HIST_DEF_)
#undef CY_HIST_DEF_
};

const double cy_hist_bounds[CY_HIST_BOUNDS] = {
#define CY_HIST_BOUND_(s) s,
    CY_HIST_BOUNDS_LIST(CY_HIST_BOUND_)
#undef CY_HIST_BOUND_
};

/* Rounded to the nearest microsecond: every bound is a whole number of
 * them, so this is exact. */
const uint64_t cy_hist_bounds_us[CY_HIST_BOUNDS] = {
#define CY_HIST_BOUND_US_(s) (uint64_t)((s) * 1e6 + 0.5),
    CY_HIST_BOUNDS_LIST(CY_HIST_BOUND_US_)
#undef CY_HIST_BOUND_US_
};

/* The literals as written, so `le` reads 0.00025 rather than 0.000250. */
const char *const cy_hist_le[CY_HIST_BUCKETS] = {
#define CY_HIST_LE_(s) #s,
    CY_HIST_BOUNDS_LIST(CY_HIST_LE_)
#undef CY_HIST_LE_
    "+Inf",
};

size_t cy_hist_bucket(uint64_t micros)
{
    /* 16 bounds: a binary search saves nothing worth its reading. */
    size_t i = 0;
    while (i < CY_HIST_BOUNDS && micros > cy_hist_bounds_us[i])
        i++;
    return i;
}

void cy_hist_observe(cy_hists *h, size_t index, uint64_t micros, int64_t now_ms)
{
    if (!h || index >= CY_HISTS_N) return;
    cy_hist *x = &h->h[index];
    x->buckets[cy_hist_bucket(micros)]++;
    x->sum_us += micros;
    x->changed_ms = now_ms;
}

uint64_t cy_hist_count(const cy_hist *h)
{
    return cy_hist_cumulative(h, CY_HIST_BUCKETS - 1);
}

uint64_t cy_hist_cumulative(const cy_hist *h, size_t i)
{
    uint64_t n = 0;
    for (size_t k = 0; k <= i && k < CY_HIST_BUCKETS; k++)
        n += h->buckets[k];
    return n;
}

void cy_hists_publish(cy_sb_slot *slot, const cy_hists *h)
{
    for (size_t i = 0; i < CY_HISTS_N; i++) {
        const cy_hist *x = &h->h[i];
        volatile uint64_t *w = slot->hists[i];
        for (size_t k = 0; k < CY_HIST_BUCKETS; k++)
            if (cy_sb_loadu(&w[k]) != x->buckets[k]) cy_sb_storeu(&w[k], x->buckets[k]);
        if (cy_sb_loadu(&w[CY_HIST_BUCKETS]) != x->sum_us)
            cy_sb_storeu(&w[CY_HIST_BUCKETS], x->sum_us);
        if (cy_sb_load(&slot->hist_changed_ms[i]) != x->changed_ms)
            cy_sb_store(&slot->hist_changed_ms[i], x->changed_ms);
    }
}

void cy_hists_read_slot(const cy_sb_slot *slot, cy_hists *out)
{
    for (size_t i = 0; i < CY_HISTS_N; i++) {
        cy_hist *x = &out->h[i];
        const volatile uint64_t *w = slot->hists[i];
        for (size_t k = 0; k < CY_HIST_BUCKETS; k++)
            x->buckets[k] = cy_sb_loadu(&w[k]);
        x->sum_us = cy_sb_loadu(&w[CY_HIST_BUCKETS]);
        x->changed_ms = cy_sb_load(&slot->hist_changed_ms[i]);
    }
}

void cy_hists_prom_name(size_t i, char *out, size_t len)
{
    snprintf(out, len, "cyan_%s", i < CY_HISTS_N ? cy_hist_defs[i].name : "");
}
