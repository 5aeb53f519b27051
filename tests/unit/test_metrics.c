/* Unit tests of src/health/metrics.c: the registry's shape (unique, valid
 * Prometheus names, the gauges that are gauges, struct fields at their
 * registry index), the scoreboard round trip, node totals over a
 * scoreboard file with shards in every state, and the Prometheus text
 * exposition (HELP/TYPE once per family, _total on counters, values,
 * per-shard labels, every allocation failure); the latency histograms
 * (their list and bounds, bucket edges, the sum, the slot round trip). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "health/metrics.h"
#include "health/scoreboard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];
static char path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/cy-metrics-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    snprintf(path, sizeof(path), "%s/scoreboard", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    rmdir(dir);
    return 0;
}

static bool prom_name_ok(const char *s)
{
    if (!*s || !(s[0] == '_' || (s[0] >= 'a' && s[0] <= 'z'))) return false;
    for (; *s; s++)
        if (!(*s == '_' || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9'))) return false;
    return true;
}

static void test_metrics_registry_shape(void **state)
{
    (void)state;
    assert_int_equal(CY_METRICS_N, 60);
    assert_true(CY_METRICS_N <= CY_SB_COUNTERS);
    int gauges = 0;
    for (size_t i = 0; i < CY_METRICS_N; i++) {
        const cy_metric_def *d = &cy_metric_defs[i];
        assert_true(prom_name_ok(d->name));
        assert_true(d->kind == CY_METRIC_COUNTER || d->kind == CY_METRIC_GAUGE);
        if (d->kind == CY_METRIC_GAUGE) gauges++;
        assert_non_null(d->unit);
        for (const char *u = d->unit; *u; u++)
            assert_true(*u >= 'a' && *u <= 'z');
        assert_true(strlen(d->help) > 0);
        assert_null(strchr(d->help, '\n'));
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(cy_metric_defs[j].name, d->name);
        assert_int_equal(cy_metrics_find(d->name), (int)i);
    }
    /* The levels are gauges; everything else only counts up. */
    assert_int_equal(gauges, 8);
    static const char *levels[] = {"clients_connected", "sessions", "subscriptions",
                                   "retained_messages", "messages_queued_online",
                                   "webhook_pending", "webhook_oldest_seconds", "coap_online"};
    for (size_t k = 0; k < 8; k++)
        assert_int_equal(cy_metric_defs[cy_metrics_find(levels[k])].kind, CY_METRIC_GAUGE);
    /* Slot order is the order the scoreboard has always had. */
    assert_string_equal(cy_metric_defs[0].name, "clients_connected");
    assert_string_equal(cy_metric_defs[29].name, "store_full_refusals"); /* appended after it */
    assert_string_equal(cy_metric_defs[CY_METRICS_N - 1].name, "presence_coalesced");
    assert_string_equal(cy_metric_defs[CY_METRICS_N - 2].name, "presence_events");
    assert_string_equal(cy_metric_defs[CY_METRICS_N - 3].name, "tls_handshake_failures");
    assert_string_equal(cy_metric_defs[CY_METRICS_N - 5].name, "limit_publish_rate");
    assert_string_equal(cy_metric_defs[CY_METRICS_N - 9].name, "auth_failures");
    assert_string_equal(cy_metric_defs[CY_METRICS_N - 10].name, "acl_file_denied");
    assert_string_equal(cy_metric_defs[CY_METRICS_N - 11].name, "coaps_handshake_failures");
    assert_string_equal(cy_metric_defs[CY_METRICS_N - 17].name, "webhook_oldest_seconds");
    assert_string_equal(cy_metric_defs[CY_METRICS_N - 24].name, "messages_queued_online");
    assert_int_equal(CY_METRIC_INDEX(publish_received), 7);
}

static void test_metrics_fields_are_registry_words(void **state)
{
    (void)state;
    cy_counters c;
    memset(&c, 0, sizeof(c));
#define CHECK_FIELD(name, kind, unit, help)                                                        \
    assert_int_equal(CY_METRIC_INDEX(name), (size_t)cy_metrics_find(#name));                     \
    c.name = 1000 + CY_METRIC_INDEX(name);
    CY_METRICS(CHECK_FIELD)
#undef CHECK_FIELD
    for (size_t i = 0; i < CY_METRICS_N; i++)
        assert_int_equal(c.v[i], 1000 + i);
}

static void test_metrics_find_unknown(void **state)
{
    (void)state;
    assert_int_equal(cy_metrics_find("events"), (int)CY_METRIC_INDEX(events));
    assert_int_equal(cy_metrics_find("client"), -1);
    assert_int_equal(cy_metrics_find("clients_connected_"), -1);
    assert_int_equal(cy_metrics_find(""), -1);
    assert_int_equal(cy_metrics_find(NULL), -1);
}

static void test_metrics_publish_read_slot(void **state)
{
    (void)state;
    cy_scoreboard w, r;
    assert_int_equal(cy_scoreboard_create(path, 2, &w), 0);
    assert_int_equal(cy_scoreboard_open(path, &r), 0);
    cy_counters c;
    for (size_t i = 0; i < CY_METRICS_N; i++)
        c.v[i] = 7 * i + 1;
    cy_metrics_publish(&w.slots[1], &c, 500);
    /* Another mapping (another process) reads the same words. */
    uint64_t got[CY_METRICS_N];
    cy_metrics_read_slot(&r.slots[1], got);
    assert_memory_equal(got, c.v, sizeof(got));
    /* Every word changed at 500 (all were 0 before, none of c is 0). */
    for (size_t i = 0; i < CY_METRICS_N; i++)
        assert_int_equal(r.slots[1].changed_ms[i], 500);
    /* Republished at 900 with one value moved: only its time moves. */
    c.v[3]++;
    cy_metrics_publish(&w.slots[1], &c, 900);
    for (size_t i = 0; i < CY_METRICS_N; i++)
        assert_int_equal(r.slots[1].changed_ms[i], i == 3 ? 900 : 500);
    cy_metrics_read_slot(&r.slots[0], got);
    for (size_t i = 0; i < CY_METRICS_N; i++)
        assert_int_equal(got[i], 0);
    /* Spare words stay untouched. */
    for (size_t i = CY_METRICS_N; i < CY_SB_COUNTERS; i++)
        assert_int_equal(r.slots[1].counters[i], 0);
    cy_scoreboard_close(&r);
    cy_scoreboard_close(&w);
}

/* Shard j's value of metric i in the board of the totals tests. */
static uint64_t val(unsigned j, size_t i)
{
    return (uint64_t)(j + 1) * 1000 + i;
}

static void board_with_states(cy_scoreboard *sb)
{
    static const int64_t states[] = {CY_SHARD_RUNNING, CY_SHARD_STARTING, CY_SHARD_RUNNING,
                                     CY_SHARD_DOWN, CY_SHARD_STOPPING};
    assert_int_equal(cy_scoreboard_create(path, 5, sb), 0);
    for (unsigned j = 0; j < 5; j++) {
        cy_sb_store(&sb->slots[j].state, states[j]);
        cy_counters c;
        for (size_t i = 0; i < CY_METRICS_N; i++)
            c.v[i] = val(j, i);
        cy_metrics_publish(&sb->slots[j], &c, 1);
    }
}

static void test_metrics_node_totals_running_only(void **state)
{
    (void)state;
    cy_scoreboard sb;
    board_with_states(&sb);
    uint64_t t[CY_METRICS_N];
    /* `cyan status`: no shard of its own; RUNNING are 0 and 2. */
    assert_int_equal(cy_metrics_node_totals(&sb, 0, NULL, t), 2);
    for (size_t i = 0; i < CY_METRICS_N; i++) {
        assert_int_equal(t[i], val(0, i) + val(2, i));
        assert_int_equal(cy_metrics_node_total(&sb, 0, NULL, i), t[i]);
    }
    /* A running shard asking: its live values replace its lagging slot. */
    cy_counters own;
    for (size_t i = 0; i < CY_METRICS_N; i++)
        own.v[i] = 5;
    assert_int_equal(cy_metrics_node_totals(&sb, 2, &own, t), 2);
    for (size_t i = 0; i < CY_METRICS_N; i++) {
        assert_int_equal(t[i], val(0, i) + 5);
        assert_int_equal(cy_metrics_node_total(&sb, 2, &own, i), t[i]);
    }
    /* A shard still starting counts itself, not the other non-running ones. */
    assert_int_equal(cy_metrics_node_totals(&sb, 1, &own, t), 3);
    for (size_t i = 0; i < CY_METRICS_N; i++) {
        assert_int_equal(t[i], val(0, i) + val(2, i) + 5);
        assert_int_equal(cy_metrics_node_total(&sb, 1, &own, i), t[i]);
    }
    /* A shard that leaves RUNNING drops out of the totals. */
    cy_sb_store(&sb.slots[0].state, CY_SHARD_DOWN);
    assert_int_equal(cy_metrics_node_totals(&sb, 0, NULL, t), 1);
    assert_int_equal(t[CY_METRIC_INDEX(sessions)], val(2, CY_METRIC_INDEX(sessions)));
    assert_int_equal(cy_metrics_node_total(&sb, 0, NULL, CY_METRICS_N), 0);
    cy_scoreboard_close(&sb);
}

static void test_metrics_node_totals_without_board(void **state)
{
    (void)state;
    cy_counters own;
    for (size_t i = 0; i < CY_METRICS_N; i++)
        own.v[i] = i * 3;
    uint64_t t[CY_METRICS_N];
    assert_int_equal(cy_metrics_node_totals(NULL, 0, &own, t), 1);
    assert_memory_equal(t, own.v, sizeof(t));
    assert_int_equal(cy_metrics_node_total(NULL, 0, &own, 4), 12);
    memset(t, 0xff, sizeof(t));
    assert_int_equal(cy_metrics_node_totals(NULL, 0, NULL, t), 0);
    for (size_t i = 0; i < CY_METRICS_N; i++)
        assert_int_equal(t[i], 0);
    assert_int_equal(cy_metrics_node_total(NULL, 0, NULL, 4), 0);
}

/* A NUL-terminated copy of the buffer's bytes. */
static char *text_of(const cy_buf *b)
{
    char *s = malloc(cy_buf_size(b) + 1);
    assert_non_null(s);
    memcpy(s, cy_buf_head(b), cy_buf_size(b));
    s[cy_buf_size(b)] = '\0';
    return s;
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

/* Check every line against the exposition grammar as this renderer uses
 * it: HELP, then TYPE, then samples of the family just typed. */
static void check_grammar(char *text, size_t samples_per_family)
{
    char family[96] = "";
    size_t families = 0, samples = 0;
    assert_true(strlen(text) > 0 && text[strlen(text) - 1] == '\n');
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char name[96], kind[16], rest[256];
        if (!strncmp(line, "# HELP ", 7)) {
            assert_int_equal(samples, families * samples_per_family);
            assert_int_equal(sscanf(line, "# HELP %95s %255[^\n]", name, rest), 2);
            assert_true(prom_name_ok(name));
            snprintf(family, sizeof(family), "%s", name);
            families++;
        } else if (!strncmp(line, "# TYPE ", 7)) {
            assert_int_equal(sscanf(line, "# TYPE %95s %15s", name, kind), 2);
            assert_string_equal(name, family);
            size_t l = strlen(name);
            if (!strcmp(kind, "counter"))
                assert_string_equal(name + l - 6, "_total");
            else
                assert_string_equal(kind, "gauge");
        } else {
            size_t l = strlen(family);
            assert_int_equal(strncmp(line, family, l), 0);
            const char *p = line + l;
            if (*p == '{') {
                assert_int_equal(strncmp(p, "{shard=\"", 8), 0);
                p += 8;
                assert_true(*p >= '0' && *p <= '9');
                while (*p >= '0' && *p <= '9')
                    p++;
                assert_int_equal(strncmp(p, "\"}", 2), 0);
                p += 2;
            }
            assert_true(*p++ == ' ');
            assert_true(*p >= '0' && *p <= '9');
            while (*p >= '0' && *p <= '9')
                p++;
            assert_true(*p == '\0');
            samples++;
        }
    }
    assert_int_equal(families, CY_METRICS_N);
    assert_int_equal(samples, CY_METRICS_N * samples_per_family);
}

static void test_metrics_prometheus_node_totals(void **state)
{
    (void)state;
    uint64_t v[CY_METRICS_N];
    for (size_t i = 0; i < CY_METRICS_N; i++)
        v[i] = 100 + i;
    v[CY_METRIC_INDEX(publish_sent)] = UINT64_MAX;
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_metrics_prometheus(&b, v, 1, NULL), 0);
    char *t = text_of(&b);
    assert_non_null(strstr(t, "# HELP cyan_clients_connected clients connected now "
                              "(connections)\n# TYPE cyan_clients_connected gauge\n"
                              "cyan_clients_connected 100\n"));
    /* A counter named ..._total is not suffixed twice. */
    assert_non_null(strstr(t, "# TYPE cyan_connects_total counter\ncyan_connects_total 101\n"));
    assert_null(strstr(t, "_total_total"));
    assert_non_null(strstr(t, "# TYPE cyan_publish_sent_total counter\n"
                              "cyan_publish_sent_total 18446744073709551615\n"));
    assert_non_null(strstr(t, "# TYPE cyan_sessions gauge\ncyan_sessions 120\n"));
    assert_non_null(strstr(t, "\ncyan_store_full_refusals_total 129\n"));
    assert_int_equal(count(t, "# HELP "), CY_METRICS_N);
    assert_int_equal(count(t, "# TYPE "), CY_METRICS_N);
    assert_int_equal(count(t, " gauge\n"), 8);
    check_grammar(t, 1);
    free(t);
    cy_buf_fini(&b);
}

static void test_metrics_prometheus_per_shard(void **state)
{
    (void)state;
    uint64_t v[2 * CY_METRICS_N];
    for (size_t i = 0; i < CY_METRICS_N; i++) {
        v[i] = i;
        v[CY_METRICS_N + i] = 1000 + i;
    }
    const unsigned shards[] = {0, 13};
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_metrics_prometheus(&b, v, 2, shards), 0);
    char *t = text_of(&b);
    assert_non_null(strstr(t, "# TYPE cyan_publish_sent_total counter\n"
                              "cyan_publish_sent_total{shard=\"0\"} 8\n"
                              "cyan_publish_sent_total{shard=\"13\"} 1008\n"));
    assert_int_equal(count(t, "# HELP cyan_publish_sent_total "), 1);
    assert_int_equal(count(t, "{shard=\"13\"}"), CY_METRICS_N);
    check_grammar(t, 2);
    free(t);
    /* Appends: a second rendering follows the first. */
    size_t first = cy_buf_size(&b);
    assert_int_equal(cy_metrics_prometheus(&b, v, 1, NULL), 0);
    assert_true(cy_buf_size(&b) > first);
    cy_buf_fini(&b);
}

static void test_metrics_prometheus_enomem(void **state)
{
    (void)state;
    uint64_t v[CY_METRICS_N] = {0};
    int rc = CY_ENOMEM;
    long n;
    for (n = 0; n < 64 && rc == CY_ENOMEM; n++) {
        cy_buf b;
        cy_buf_init(&b);
        cy_alloc_fail_after(n);
        rc = cy_metrics_prometheus(&b, v, 1, NULL);
        cy_alloc_fail_after(-1);
        assert_true(rc == 0 || rc == CY_ENOMEM);
        cy_buf_fini(&b);
    }
    assert_int_equal(rc, 0);
    assert_true(n > 1); /* at least one failure was walked */
}

/* ---- latency histograms ---- */

static void test_hists_registry_shape(void **state)
{
    (void)state;
    assert_int_equal(CY_HISTS_N, 2);
    assert_true(CY_HISTS_N <= CY_SB_HISTS);
    assert_int_equal(CY_HIST_BUCKETS, 17);
    assert_int_equal(CY_HIST_BUCKETS + 1, CY_SB_HIST_WORDS);
    assert_string_equal(cy_hist_defs[CY_HIST_API_REQUEST].name, "api_request_duration_seconds");
    assert_string_equal(cy_hist_defs[CY_HIST_DEVICE_CALL].name, "device_call_duration_seconds");
    for (size_t i = 0; i < CY_HISTS_N; i++) {
        const cy_hist_def *d = &cy_hist_defs[i];
        assert_true(prom_name_ok(d->name));
        size_t l = strlen(d->name);
        assert_true(l > 8 && !strcmp(d->name + l - 8, "_seconds"));
        assert_true(strlen(d->help) > 0);
        assert_null(strchr(d->help, '\n'));
        /* No histogram family collides with a registry metric's name. */
        assert_int_equal(cy_metrics_find(d->name), -1);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(cy_hist_defs[j].name, d->name);
        char pn[80];
        cy_hists_prom_name(i, pn, sizeof(pn));
        assert_int_equal(strncmp(pn, "cyan_", 5), 0);
        assert_string_equal(pn + 5, d->name);
    }
}

static void test_hists_bounds(void **state)
{
    (void)state;
    static const uint64_t want_us[] = {100,     250,     500,     1000,    2500,   5000,
                                       10000,   25000,   50000,   100000,  250000, 500000,
                                       1000000, 2500000, 5000000, 10000000};
    static const char *const want_le[] = {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
                                          "0.01",   "0.025",   "0.05",   "0.1",   "0.25",   "0.5",
                                          "1",      "2.5",     "5",      "10",    "+Inf"};
    assert_int_equal(CY_HIST_BOUNDS, sizeof(want_us) / sizeof(want_us[0]));
    for (size_t i = 0; i < CY_HIST_BOUNDS; i++) {
        assert_int_equal(cy_hist_bounds_us[i], want_us[i]);
        /* Seconds and microseconds are the same bound. */
        assert_true(cy_hist_bounds[i] * 1e6 > (double)want_us[i] - 1e-6);
        assert_true(cy_hist_bounds[i] * 1e6 < (double)want_us[i] + 1e-6);
        /* The le text parses back to the bound (what Prometheus reads). */
        assert_true(strtod(cy_hist_le[i], NULL) == cy_hist_bounds[i]);
        if (i) assert_true(cy_hist_bounds[i] > cy_hist_bounds[i - 1]);
    }
    for (size_t i = 0; i < CY_HIST_BUCKETS; i++)
        assert_string_equal(cy_hist_le[i], want_le[i]);
}

static void test_hist_bucket_edges(void **state)
{
    (void)state;
    assert_int_equal(cy_hist_bucket(0), 0);
    assert_int_equal(cy_hist_bucket(1), 0);
    for (size_t i = 0; i < CY_HIST_BOUNDS; i++) {
        uint64_t b = cy_hist_bounds_us[i];
        /* le: a value exactly at a bound is in that bound's bucket... */
        assert_int_equal(cy_hist_bucket(b), i);
        /* ...one microsecond more is in the next (the last: +Inf). */
        assert_int_equal(cy_hist_bucket(b + 1), i + 1);
        /* ...and one less too (no two bounds are a microsecond apart). */
        assert_int_equal(cy_hist_bucket(b - 1), i);
    }
    assert_int_equal(cy_hist_bucket(10000001), CY_HIST_BUCKETS - 1);
    assert_int_equal(cy_hist_bucket(UINT64_MAX), CY_HIST_BUCKETS - 1);
}

static void test_hist_observe(void **state)
{
    (void)state;
    cy_hists h;
    memset(&h, 0, sizeof(h));
    cy_hist *x = &h.h[CY_HIST_API_REQUEST];
    cy_hist_observe(&h, CY_HIST_API_REQUEST, 100, 10);      /* le 0.0001, at the bound */
    cy_hist_observe(&h, CY_HIST_API_REQUEST, 101, 11);      /* le 0.00025 */
    cy_hist_observe(&h, CY_HIST_API_REQUEST, 1000000, 12);  /* le 1, at the bound */
    cy_hist_observe(&h, CY_HIST_API_REQUEST, 60000000, 13); /* a minute: +Inf */
    cy_hist_observe(&h, CY_HIST_API_REQUEST, 0, 14);        /* le 0.0001 */
    assert_int_equal(x->buckets[0], 2);
    assert_int_equal(x->buckets[1], 1);
    assert_int_equal(x->buckets[12], 1);
    assert_int_equal(x->buckets[CY_HIST_BUCKETS - 1], 1);
    assert_int_equal(x->sum_us, 100 + 101 + 1000000 + 60000000);
    assert_int_equal(x->changed_ms, 14);
    assert_int_equal(cy_hist_count(x), 5);
    /* Cumulative, as Prometheus's _bucket{le}: grows with le, +Inf is the count. */
    assert_int_equal(cy_hist_cumulative(x, 0), 2);
    assert_int_equal(cy_hist_cumulative(x, 1), 3);
    assert_int_equal(cy_hist_cumulative(x, 11), 3);
    assert_int_equal(cy_hist_cumulative(x, 12), 4);
    assert_int_equal(cy_hist_cumulative(x, CY_HIST_BOUNDS - 1), 4);
    assert_int_equal(cy_hist_cumulative(x, CY_HIST_BUCKETS - 1), 5);
    assert_int_equal(cy_hist_cumulative(x, CY_HIST_BUCKETS + 5), 5);
    /* The other histogram did not move. */
    assert_int_equal(cy_hist_count(&h.h[CY_HIST_DEVICE_CALL]), 0);
    assert_int_equal(h.h[CY_HIST_DEVICE_CALL].sum_us, 0);
    assert_int_equal(h.h[CY_HIST_DEVICE_CALL].changed_ms, 0);
    /* Out of range and NULL are ignored. */
    cy_hists before = h;
    cy_hist_observe(&h, CY_HISTS_N, 5, 99);
    cy_hist_observe(NULL, CY_HIST_API_REQUEST, 5, 99);
    assert_memory_equal(&h, &before, sizeof(h));
}

static void test_hists_publish_read_slot(void **state)
{
    (void)state;
    cy_scoreboard w, r;
    assert_int_equal(cy_scoreboard_create(path, 3, &w), 0);
    assert_int_equal(cy_scoreboard_open(path, &r), 0);
    cy_hists h, got;
    memset(&h, 0, sizeof(h));
    /* Nothing published: all zero, never observed. */
    cy_hists_read_slot(&r.slots[2], &got);
    assert_memory_equal(&got, &h, sizeof(h));
    cy_hist_observe(&h, CY_HIST_DEVICE_CALL, 2500, 700);
    cy_hist_observe(&h, CY_HIST_DEVICE_CALL, 7000000, 800);
    cy_hist_observe(&h, CY_HIST_API_REQUEST, 42, 650);
    cy_hists_publish(&w.slots[2], &h);
    /* Another mapping (another process) reads the same words. */
    cy_hists_read_slot(&r.slots[2], &got);
    assert_memory_equal(&got, &h, sizeof(h));
    assert_int_equal(got.h[CY_HIST_DEVICE_CALL].buckets[4], 1);  /* le 0.0025 */
    assert_int_equal(got.h[CY_HIST_DEVICE_CALL].buckets[15], 1); /* le 10 */
    assert_int_equal(got.h[CY_HIST_DEVICE_CALL].sum_us, 7002500);
    assert_int_equal(got.h[CY_HIST_DEVICE_CALL].changed_ms, 800);
    assert_int_equal(got.h[CY_HIST_API_REQUEST].changed_ms, 650);
    /* The slot's layout: bucket words, then the sum; change times beside. */
    assert_int_equal(r.slots[2].hists[CY_HIST_DEVICE_CALL][4], 1);
    assert_int_equal(r.slots[2].hists[CY_HIST_DEVICE_CALL][CY_SB_HIST_WORDS - 1], 7002500);
    assert_int_equal(r.slots[2].hist_changed_ms[CY_HIST_DEVICE_CALL], 800);
    /* Spare histograms, other slots and the counters stay untouched. */
    for (size_t i = CY_HISTS_N; i < CY_SB_HISTS; i++) {
        for (size_t k = 0; k < CY_SB_HIST_WORDS; k++)
            assert_int_equal(r.slots[2].hists[i][k], 0);
        assert_int_equal(r.slots[2].hist_changed_ms[i], 0);
    }
    for (size_t i = 0; i < CY_SB_COUNTERS; i++)
        assert_int_equal(r.slots[2].counters[i], 0);
    cy_hists_read_slot(&r.slots[1], &got);
    for (size_t i = 0; i < CY_HISTS_N; i++)
        assert_int_equal(cy_hist_count(&got.h[i]), 0);
    /* A later observation moves its words and time only. */
    cy_hist_observe(&h, CY_HIST_API_REQUEST, 30000, 900);
    cy_hists_publish(&w.slots[2], &h);
    cy_hists_read_slot(&r.slots[2], &got);
    assert_memory_equal(&got, &h, sizeof(h));
    assert_int_equal(got.h[CY_HIST_API_REQUEST].changed_ms, 900);
    assert_int_equal(got.h[CY_HIST_DEVICE_CALL].changed_ms, 800);
    assert_int_equal(cy_hist_count(&got.h[CY_HIST_API_REQUEST]), 2);
    assert_int_equal(cy_hist_cumulative(&got.h[CY_HIST_API_REQUEST], 7), 1); /* le 0.025 */
    assert_int_equal(cy_hist_cumulative(&got.h[CY_HIST_API_REQUEST], 8), 2); /* le 0.05 */
    /* A restarted shard's fresh zeros replace what its predecessor left. */
    cy_hists fresh;
    memset(&fresh, 0, sizeof(fresh));
    cy_hists_publish(&w.slots[2], &fresh);
    cy_hists_read_slot(&r.slots[2], &got);
    assert_memory_equal(&got, &fresh, sizeof(fresh));
    cy_scoreboard_close(&r);
    cy_scoreboard_close(&w);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_metrics_registry_shape),
        T(test_metrics_fields_are_registry_words),
        T(test_metrics_find_unknown),
        T(test_metrics_publish_read_slot),
        T(test_metrics_node_totals_running_only),
        T(test_metrics_node_totals_without_board),
        T(test_metrics_prometheus_node_totals),
        T(test_metrics_prometheus_per_shard),
        T(test_metrics_prometheus_enomem),
        T(test_hists_registry_shape),
        T(test_hists_bounds),
        T(test_hist_bucket_edges),
        T(test_hist_observe),
        T(test_hists_publish_read_slot),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
