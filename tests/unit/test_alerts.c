/* Unit tests for monitor/alerts: every rule kind through pending, firing and
 * resolved over synthetic snapshots and times, the `for` and max_age
 * boundaries, series that disappear, the bounds, the rules file (errors
 * with line numbers, defaults replaced and disabled), the built-in rules
 * against the 5 s requirement, and the Alertmanager webhook body
 * (parsed back with jansson). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "alerts/alerts.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T0 1796378523120LL /* 2026-12-04T10:02:03.120Z */

static cy_alert_rules *rules_new(const char *text)
{
    cy_alert_rules *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    char err[256];
    int rc = cy_alert_rules_parse(r, text, "test.conf", err, sizeof(err));
    if (rc) fail_msg("parse: %s", err);
    return r;
}

static cy_alerts *engine(const char *text, const cy_alerts_limits *lim)
{
    cy_alert_rules *r = rules_new(text);
    cy_alerts *e;
    assert_int_equal(cy_alerts_new(&e, r, lim), 0);
    free(r);
    return e;
}

static void add(cy_snapshot *s, const char *name, const char *labels, double v, int64_t changed)
{
    assert_int_equal(cy_snapshot_add(s, name, labels, CY_SAMPLE_GAUGE, v, changed, false), 0);
}

static size_t ntrans(cy_alerts *e)
{
    size_t n;
    cy_alerts_transitions(e, &n);
    return n;
}

static const cy_alert *trans(cy_alerts *e, size_t i)
{
    size_t n;
    const cy_alert *t = cy_alerts_transitions(e, &n);
    assert_true(i < n);
    return &t[i];
}

static size_t nactive(cy_alerts *e)
{
    size_t n;
    cy_alerts_active(e, &n);
    return n;
}

static const cy_alert *active(cy_alerts *e, size_t i)
{
    size_t n;
    const cy_alert *a = cy_alerts_active(e, &n);
    assert_true(i < n);
    return &a[i];
}

/* One evaluation over one series (plus optional extra series). */
static void eval1(cy_alerts *e, int64_t now, const char *name, const char *labels, double v,
                  int64_t changed)
{
    cy_snapshot s;
    cy_snapshot_init(&s, now);
    add(&s, name, labels, v, changed);
    assert_int_equal(cy_alerts_eval(e, &s, now), 0);
    cy_snapshot_fini(&s);
}

static void test_threshold_lifecycle(void **state)
{
    (void)state;
    cy_alerts *e =
        engine("alert Backlog threshold cyan_shard_backlog > 10 for=2s severity=critical "
               "summary=\"shard {{shard}} owes {{value}} ({{alertname}}, {{severity}}, "
               "{{component}})\"\n",
               NULL);
    const char *l = "shard=\"1\"";
    eval1(e, T0, "cyan_shard_backlog", l, 5, T0);
    assert_int_equal(nactive(e), 0);
    assert_int_equal(ntrans(e), 0);
    eval1(e, T0 + 1000, "cyan_shard_backlog", l, 20, T0 + 1000);
    assert_int_equal(nactive(e), 1);
    assert_int_equal(active(e, 0)->state, CY_ALERT_PENDING);
    assert_int_equal(active(e, 0)->active_ms, T0 + 1000);
    assert_int_equal(active(e, 0)->starts_at_ms, 0);
    assert_int_equal(ntrans(e), 0);
    /* 1999 ms into `for`: still pending. */
    eval1(e, T0 + 2999, "cyan_shard_backlog", l, 20, T0 + 1000);
    assert_int_equal(active(e, 0)->state, CY_ALERT_PENDING);
    assert_int_equal(ntrans(e), 0);
    /* Exactly `for`: firing (as Prometheus: held >= for). */
    eval1(e, T0 + 3000, "cyan_shard_backlog", l, 20, T0 + 1000);
    assert_int_equal(ntrans(e), 1);
    const cy_alert *a = trans(e, 0);
    assert_int_equal(a->state, CY_ALERT_FIRING);
    assert_string_equal(a->name, "Backlog");
    assert_string_equal(
        a->labels, "alertname=\"Backlog\",component=\"shard-1\",severity=\"critical\",shard=\"1\"");
    assert_string_equal(a->component, "shard-1");
    assert_string_equal(a->shard, "1");
    assert_int_equal(a->severity, CY_ALERT_CRITICAL);
    assert_string_equal(a->summary, "shard 1 owes 20 (Backlog, critical, shard-1)");
    assert_string_equal(a->evidence,
                        "cyan_shard_backlog{shard=\"1\"} = 20 since 2026-12-04T10:02:04.120Z");
    assert_int_equal(a->starts_at_ms, T0 + 3000);
    assert_int_equal(a->active_ms, T0 + 1000);
    assert_int_equal(a->ends_at_ms, 0);
    uint64_t fp = a->fingerprint;
    /* Still firing: no new transition, value and summary follow. */
    eval1(e, T0 + 4000, "cyan_shard_backlog", l, 30, T0 + 4000);
    assert_int_equal(ntrans(e), 0);
    assert_int_equal(active(e, 0)->state, CY_ALERT_FIRING);
    assert_string_equal(active(e, 0)->summary, "shard 1 owes 30 (Backlog, critical, shard-1)");
    assert_int_equal(active(e, 0)->fingerprint, fp);
    /* Back under: resolved. */
    eval1(e, T0 + 5000, "cyan_shard_backlog", l, 3, T0 + 5000);
    assert_int_equal(ntrans(e), 1);
    a = trans(e, 0);
    assert_int_equal(a->state, CY_ALERT_RESOLVED);
    assert_int_equal(a->starts_at_ms, T0 + 3000);
    assert_int_equal(a->ends_at_ms, T0 + 5000);
    assert_int_equal(a->fingerprint, fp);
    assert_int_equal(nactive(e), 0);
    size_t nr;
    const cy_alert *res = cy_alerts_resolved(e, &nr);
    assert_int_equal(nr, 1);
    assert_int_equal(res[0].ends_at_ms, T0 + 5000);
    /* Pending that clears goes back to inactive without a transition. */
    eval1(e, T0 + 6000, "cyan_shard_backlog", l, 50, T0 + 6000);
    assert_int_equal(active(e, 0)->state, CY_ALERT_PENDING);
    eval1(e, T0 + 7000, "cyan_shard_backlog", l, 1, T0 + 7000);
    assert_int_equal(ntrans(e), 0);
    assert_int_equal(nactive(e), 0);
    /* and its `for` starts again from the next true evaluation. */
    eval1(e, T0 + 8000, "cyan_shard_backlog", l, 50, T0 + 8000);
    eval1(e, T0 + 9000, "cyan_shard_backlog", l, 50, T0 + 8000);
    assert_int_equal(active(e, 0)->state, CY_ALERT_PENDING);
    eval1(e, T0 + 10000, "cyan_shard_backlog", l, 50, T0 + 8000);
    assert_int_equal(active(e, 0)->state, CY_ALERT_FIRING);
    cy_alerts_stats st;
    cy_alerts_stats_get(e, &st);
    assert_int_equal(st.rules, 1);
    assert_int_equal(st.instances, 1);
    assert_int_equal(st.firing, 1);
    assert_int_equal(st.resolved, 1);
    assert_int_equal(st.evaluations, 11);
    cy_alerts_free(e);
}

static void test_threshold_ops_and_for0(void **state)
{
    (void)state;
    struct {
        const char *op;
        double v;
        bool fires;
    } c[] = {{">", 2, false},  {">", 2.5, true}, {">=", 2, true}, {"<", 2, false},
             {"<", 1, true},   {"<=", 2, true},  {"==", 2, true}, {"==", 2.1, false},
             {"!=", 2, false}, {"!=", 0, true}};
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        char text[128];
        snprintf(text, sizeof(text), "alert X threshold m %s 2\n", c[i].op);
        cy_alerts *e = engine(text, NULL);
        eval1(e, T0, "m", "", c[i].v, T0);
        /* for=0: firing at the first true evaluation, reported once. */
        assert_int_equal(ntrans(e), c[i].fires ? 1 : 0);
        if (c[i].fires) assert_int_equal(trans(e, 0)->state, CY_ALERT_FIRING);
        eval1(e, T0 + 1000, "m", "", c[i].v, T0);
        assert_int_equal(ntrans(e), 0);
        assert_int_equal(nactive(e), c[i].fires ? 1 : 0);
        cy_alerts_free(e);
    }
}

static void test_selector_and_instances(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert Up threshold cyan_shard_up{shard=\"1\"} == 0 component=api\n"
                          "alert AnyUp threshold cyan_shard_up == 0 component=shard\n",
                          NULL);
    cy_snapshot s;
    cy_snapshot_init(&s, T0);
    add(&s, "cyan_shard_up", "shard=\"0\"", 0, T0);
    add(&s, "cyan_shard_up", "shard=\"1\"", 0, T0);
    add(&s, "cyan_shard_up", "shard=\"2\"", 1, T0);
    add(&s, "cyan_other", "shard=\"1\"", 0, T0);
    assert_int_equal(cy_alerts_eval(e, &s, T0), 0);
    cy_snapshot_fini(&s);
    /* Up: only shard 1; AnyUp: shards 0 and 1. Transitions in rule order. */
    assert_int_equal(ntrans(e), 3);
    assert_string_equal(trans(e, 0)->name, "Up");
    assert_string_equal(trans(e, 0)->component, "api");
    assert_string_equal(trans(e, 1)->name, "AnyUp");
    assert_string_equal(trans(e, 1)->component, "shard-0");
    assert_string_equal(trans(e, 2)->component, "shard-1");
    assert_true(trans(e, 1)->fingerprint != trans(e, 2)->fingerprint);
    /* Active: firing first, then severity (all warning), name, labels. */
    assert_int_equal(nactive(e), 3);
    assert_string_equal(active(e, 0)->name, "AnyUp");
    assert_string_equal(active(e, 0)->shard, "0");
    assert_string_equal(active(e, 1)->shard, "1");
    assert_string_equal(active(e, 2)->name, "Up");
    cy_alerts_free(e);
}

static void test_staleness(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert Stall staleness cyan_shard_progress_total max_age=1s "
                          "while=cyan_shard_backlog severity=critical\n",
                          NULL);
    const char *l = "shard=\"3\"";
    cy_snapshot s;
    cy_snapshot_init(&s, 0);
#define STEP(now, prog, prog_ch, backlog, backlog_ch)                                              \
    do {                                                                                           \
        cy_snapshot_reset(&s, now);                                                                \
        add(&s, "cyan_shard_progress_total", l, prog, prog_ch);                                    \
        if ((backlog) >= 0) add(&s, "cyan_shard_backlog", l, backlog, backlog_ch);                 \
        assert_int_equal(cy_alerts_eval(e, &s, now), 0);                                           \
    } while (0)
    /* Idle for an hour: progress still, backlog 0: never stale. */
    STEP(T0, 100, T0 - 3600000, 0, T0 - 3600000);
    STEP(T0 + 1000, 100, T0 - 3600000, 0, T0 - 3600000);
    assert_int_equal(nactive(e), 0);
    /* Work arrives at T0+1500: the clock starts then, not an hour ago. */
    STEP(T0 + 2000, 100, T0 - 3600000, 5, T0 + 1500);
    assert_int_equal(nactive(e), 0);
    /* Exactly max_age after: not yet (strictly more than max_age). */
    STEP(T0 + 2500, 100, T0 - 3600000, 7, T0 + 2400);
    STEP(T0 + 2500 + 0, 100, T0 - 3600000, 7, T0 + 2400);
    assert_int_equal(nactive(e), 0);
    /* The backlog changing value (still > 0) does not restart the clock. */
    STEP(T0 + 2501, 100, T0 - 3600000, 9, T0 + 2501);
    assert_int_equal(ntrans(e), 1);
    const cy_alert *a = trans(e, 0);
    assert_int_equal(a->state, CY_ALERT_FIRING);
    assert_string_equal(a->evidence,
                        "cyan_shard_progress_total{shard=\"3\"} = 100 unchanged since "
                        "2026-12-04T09:02:03.120Z while cyan_shard_backlog{shard=\"3\"} = 9");
    /* Progress moves: resolved. */
    STEP(T0 + 3000, 101, T0 + 2900, 9, T0 + 2501);
    assert_int_equal(ntrans(e), 1);
    assert_int_equal(trans(e, 0)->state, CY_ALERT_RESOLVED);
    /* Stuck again for more than 1 s after the last move. */
    STEP(T0 + 3900, 101, T0 + 2900, 9, T0 + 2501);
    assert_int_equal(nactive(e), 0);
    STEP(T0 + 4000, 101, T0 + 2900, 9, T0 + 2501);
    assert_int_equal(ntrans(e), 1);
    /* Backlog drained: the guard is false, resolved. */
    STEP(T0 + 5000, 101, T0 + 2900, 0, T0 + 4500);
    assert_int_equal(ntrans(e), 1);
    assert_int_equal(trans(e, 0)->state, CY_ALERT_RESOLVED);
    /* A guard series that is missing makes the condition false. */
    STEP(T0 + 9000, 101, T0 + 2900, -1, 0);
    assert_int_equal(nactive(e), 0);
    cy_snapshot_fini(&s);
#undef STEP
    cy_alerts_free(e);
}

static void test_staleness_unknown_changed(void **state)
{
    (void)state;
    /* changed_ms 0 (unknown): the engine keeps its own record of changes. */
    cy_alerts *e = engine("alert S staleness m max_age=2s\n", NULL);
    eval1(e, T0, "m", "", 1, 0);
    eval1(e, T0 + 1000, "m", "", 2, 0); /* changed: seen at T0+1000 */
    eval1(e, T0 + 3000, "m", "", 2, 0);
    assert_int_equal(nactive(e), 0);
    eval1(e, T0 + 3001, "m", "", 2, 0);
    assert_int_equal(ntrans(e), 1);
    assert_non_null(strstr(trans(e, 0)->evidence, "unchanged since 2026-12-04T10:02:04.120Z"));
    cy_alerts_free(e);
}

static void test_absence(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert Canary absence cyan_canary_success_total max_age=3s "
                          "severity=critical summary=\"{{labels.step}} canary on {{shard}}\"\n",
                          NULL);
    const char *l = "shard=\"0\",step=\"call\"";
    /* First sight counts as a change: grace of max_age. */
    eval1(e, T0, "cyan_canary_success_total", l, 10, 0);
    eval1(e, T0 + 1000, "cyan_canary_success_total", l, 11, 0);
    eval1(e, T0 + 2000, "cyan_canary_success_total", l, 12, T0 + 1900);
    eval1(e, T0 + 4900, "cyan_canary_success_total", l, 12, T0 + 1900);
    assert_int_equal(nactive(e), 0);
    eval1(e, T0 + 4901, "cyan_canary_success_total", l, 12, T0 + 1900);
    assert_int_equal(ntrans(e), 1);
    const cy_alert *a = trans(e, 0);
    assert_string_equal(a->summary, "call canary on 0");
    assert_string_equal(a->component, "shard-0");
    assert_string_equal(a->evidence, "cyan_canary_success_total{shard=\"0\",step=\"call\"} = 12, "
                                     "no increase since 2026-12-04T10:02:05.020Z");
    /* A drop to 0 (the monitor restarted its counter) is no increase. */
    eval1(e, T0 + 6000, "cyan_canary_success_total", l, 0, T0 + 6000);
    assert_int_equal(ntrans(e), 0);
    assert_int_equal(nactive(e), 1);
    /* An increase resolves; a reset to a positive value counts as one. */
    eval1(e, T0 + 7000, "cyan_canary_success_total", l, 1, T0 + 6900);
    assert_int_equal(ntrans(e), 1);
    assert_int_equal(trans(e, 0)->state, CY_ALERT_RESOLVED);
    eval1(e, T0 + 11000, "cyan_canary_success_total", l, 1, T0 + 6900);
    assert_int_equal(ntrans(e), 1); /* firing again */
    eval1(e, T0 + 12000, "cyan_canary_success_total", l, 0, 0);
    eval1(e, T0 + 12500, "cyan_canary_success_total", l, 4, 0); /* reset then 4 */
    assert_int_equal(ntrans(e), 1);
    assert_int_equal(trans(e, 0)->state, CY_ALERT_RESOLVED);
    cy_alerts_free(e);
}

static void test_absence_guard(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert A absence c max_age=1s while=g\n", NULL);
    cy_snapshot s;
    cy_snapshot_init(&s, 0);
    for (int i = 0; i < 5; i++) {
        int64_t now = T0 + i * 1000;
        cy_snapshot_reset(&s, now);
        add(&s, "c", "", 5, T0 - 100000);
        add(&s, "g", "", i < 3 ? 0 : 1, i < 3 ? T0 : T0 + 3000);
        assert_int_equal(cy_alerts_eval(e, &s, now), 0);
        /* Guard 0 until i = 3 (c unchanged for 100 s is no alert then); from
         * then the clock starts at the guard's change (T0+3000), and at i = 4
         * exactly max_age has passed: not more. */
        assert_int_equal(nactive(e), 0);
    }
    cy_snapshot_reset(&s, T0 + 4001);
    add(&s, "c", "", 5, T0 - 100000);
    add(&s, "g", "", 1, T0 + 3000);
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 4001), 0);
    assert_int_equal(nactive(e), 1);
    cy_snapshot_fini(&s);
    cy_alerts_free(e);
}

static void flow_step(cy_alerts *e, int64_t now, double in, int64_t in_ch, double out,
                      int64_t out_ch)
{
    cy_snapshot s;
    cy_snapshot_init(&s, now);
    add(&s, "in_total", "shard=\"0\"", in, in_ch);
    if (out >= 0) add(&s, "out_total", "shard=\"0\"", out, out_ch);
    add(&s, "in_total", "shard=\"1\"", 0, T0 - 100000); /* never moves: never alerts */
    add(&s, "out_total", "shard=\"1\"", 0, T0 - 100000);
    assert_int_equal(cy_alerts_eval(e, &s, now), 0);
    cy_snapshot_fini(&s);
}

static void test_flow(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert Flow flow in_total out_total window=5s for=2s\n", NULL);
    /* Both moving. */
    flow_step(e, T0, 10, T0, 10, T0);
    flow_step(e, T0 + 1000, 20, T0 + 1000, 20, T0 + 1000);
    /* Output stops at T0+1000, input keeps going. */
    flow_step(e, T0 + 3000, 30, T0 + 3000, 20, T0 + 1000);
    flow_step(e, T0 + 6000, 40, T0 + 6000, 20, T0 + 1000);
    assert_int_equal(nactive(e), 0); /* output still for exactly the window: not more */
    flow_step(e, T0 + 6001, 40, T0 + 6000, 20, T0 + 1000);
    assert_int_equal(nactive(e), 1);
    assert_int_equal(active(e, 0)->state, CY_ALERT_PENDING);
    flow_step(e, T0 + 8001, 50, T0 + 8000, 20, T0 + 1000);
    assert_int_equal(ntrans(e), 1);
    const cy_alert *a = trans(e, 0);
    assert_int_equal(a->state, CY_ALERT_FIRING);
    assert_string_equal(a->evidence, "in_total{shard=\"0\"} = 50 rose at 2026-12-04T10:02:11.120Z; "
                                     "out_total{shard=\"0\"} = 20 unchanged since "
                                     "2026-12-04T10:02:04.120Z");
    /* Input stops too: after the window, nothing flows in: resolved. */
    flow_step(e, T0 + 13000, 50, T0 + 8000, 20, T0 + 1000);
    assert_int_equal(nactive(e), 1);
    flow_step(e, T0 + 13001, 50, T0 + 8000, 20, T0 + 1000);
    assert_int_equal(ntrans(e), 1);
    assert_int_equal(trans(e, 0)->state, CY_ALERT_RESOLVED);
    /* Output missing: false. */
    flow_step(e, T0 + 14000, 60, T0 + 14000, -1, 0);
    flow_step(e, T0 + 30000, 70, T0 + 30000, -1, 0);
    assert_int_equal(nactive(e), 0);
    cy_alerts_free(e);
}

static void test_flow_sum(void **state)
{
    (void)state;
    /* Summed over shards: a publish received on shard 0 and sent by
     * shard 1 is flow, not a stop. */
    cy_alerts *e = engine("alert F flow in_total out_total window=2s while=subs sum=yes "
                          "component=mqtt\n",
                          NULL);
    cy_snapshot s;
    cy_snapshot_init(&s, 0);
    for (int i = 0; i <= 10; i++) {
        int64_t now = T0 + i * 1000;
        cy_snapshot_reset(&s, now);
        add(&s, "in_total", "shard=\"0\"", 10 * i, now);
        add(&s, "out_total", "shard=\"0\"", 0, T0 - 5000);
        add(&s, "in_total", "shard=\"1\"", 0, T0 - 5000);
        /* shard 1 delivers until i = 5 */
        add(&s, "out_total", "shard=\"1\"", i <= 5 ? 10 * i : 50, i <= 5 ? now : T0 + 5000);
        add(&s, "subs", "shard=\"1\"", 1, T0 - 5000);
        assert_int_equal(cy_alerts_eval(e, &s, now), 0);
        if (i <= 7) assert_int_equal(nactive(e), 0);
    }
    assert_int_equal(nactive(e), 1);
    const cy_alert *a = active(e, 0);
    assert_string_equal(a->labels, "alertname=\"F\",component=\"mqtt\",severity=\"warning\"");
    assert_string_equal(a->shard, "");
    assert_non_null(strstr(a->evidence, "sum in_total = 100 rose at"));
    assert_non_null(
        strstr(a->evidence, "sum out_total = 50 unchanged since 2026-12-04T10:02:08.120Z"));
    assert_non_null(strstr(a->evidence, "while sum subs = 1"));
    /* No subscriptions: false. */
    cy_snapshot_reset(&s, T0 + 11000);
    add(&s, "in_total", "shard=\"0\"", 110, T0 + 11000);
    add(&s, "out_total", "shard=\"1\"", 50, T0 + 5000);
    add(&s, "subs", "shard=\"1\"", 0, T0 + 11000);
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 11000), 0);
    assert_int_equal(ntrans(e), 1);
    assert_int_equal(trans(e, 0)->state, CY_ALERT_RESOLVED);
    cy_snapshot_fini(&s);
    cy_alerts_free(e);
}

static void test_increase(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert R increase cyan_shard_restarts_total > 0 window=32s "
                          "summary=\"{{labels.reason}} restart of shard {{shard}}: {{value}}\"\n",
                          NULL);
    const char *l = "reason=\"hung\",shard=\"2\"";
    /* Restarts from before the monitor started are the baseline. */
    eval1(e, T0, "cyan_shard_restarts_total", l, 7, T0 - 60000);
    assert_int_equal(nactive(e), 0);
    eval1(e, T0 + 1000, "cyan_shard_restarts_total", l, 7, T0 - 60000);
    assert_int_equal(nactive(e), 0);
    eval1(e, T0 + 2000, "cyan_shard_restarts_total", l, 8, T0 + 1900);
    assert_int_equal(ntrans(e), 1);
    const cy_alert *a = trans(e, 0);
    assert_string_equal(a->summary, "hung restart of shard 2: 1");
    assert_string_equal(a->evidence,
                        "cyan_shard_restarts_total{reason=\"hung\",shard=\"2\"} rose by 1 in the "
                        "last 32s to 8, last at 2026-12-04T10:02:05.020Z");
    /* Stays firing through the window; resolves once the increase is older
     * than the window (resolution window/32 = 1 s). */
    int64_t resolved_at = 0;
    for (int64_t t = T0 + 3000; t <= T0 + 40000; t += 1000) {
        eval1(e, t, "cyan_shard_restarts_total", l, 8, T0 + 1900);
        if (ntrans(e)) {
            assert_int_equal(trans(e, 0)->state, CY_ALERT_RESOLVED);
            resolved_at = t;
            break;
        }
    }
    assert_true(resolved_at >= T0 + 2000 + 32000);
    assert_true(resolved_at <= T0 + 2000 + 32000 + 2000);
    /* A counter reset (the shard's counter starts again) counts as an increase of the new value. */
    eval1(e, resolved_at + 1000, "cyan_shard_restarts_total", l, 2, resolved_at + 900);
    assert_int_equal(ntrans(e), 1);
    assert_true(active(e, 0)->value == 2);
    cy_alerts_free(e);
}

static void test_increase_long_window(void **state)
{
    (void)state;
    /* 5 minutes evaluated every second: 34 points cover it. */
    cy_alerts *e = engine("alert R increase c >= 3 window=5m\n", NULL);
    double v = 0;
    int fired = 0, resolved = 0;
    for (int i = 0; i < 700; i++) {
        int64_t now = T0 + i * 1000;
        if (i == 10 || i == 100 || i == 200) v++; /* 3 increases within 5 min from 10 to 200 */
        eval1(e, now, "c", "", v, 0);
        for (size_t k = 0; k < ntrans(e); k++) {
            if (trans(e, k)->state == CY_ALERT_FIRING) {
                assert_int_equal(i, 200);
                fired++;
            } else {
                /* The first increase (i = 10) leaves the 5 min window after
                 * i = 310, within one point's step (9.375 s). */
                assert_true(i >= 310 && i <= 320);
                resolved++;
            }
        }
    }
    assert_int_equal(fired, 1);
    assert_int_equal(resolved, 1);
    cy_alerts_free(e);
}

static void test_heartbeat(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert Watchdog heartbeat severity=info component=monitor\n", NULL);
    cy_snapshot s;
    cy_snapshot_init(&s, T0);
    assert_int_equal(cy_alerts_eval(e, &s, T0), 0); /* an empty snapshot */
    assert_int_equal(ntrans(e), 1);
    assert_int_equal(trans(e, 0)->state, CY_ALERT_FIRING);
    assert_string_equal(trans(e, 0)->labels,
                        "alertname=\"Watchdog\",component=\"monitor\",severity=\"info\"");
    assert_string_equal(trans(e, 0)->summary, "Watchdog on monitor");
    for (int i = 1; i < 5; i++) {
        assert_int_equal(cy_alerts_eval(e, &s, T0 + i * 1000), 0);
        assert_int_equal(ntrans(e), 0);
        assert_int_equal(nactive(e), 1);
    }
    assert_int_equal(active(e, 0)->starts_at_ms, T0);
    cy_snapshot_fini(&s);
    cy_alerts_free(e);
}

static void test_disappearing_series(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert Down threshold cyan_shard_up == 0\n"
                          "alert Pend threshold cyan_shard_up == 0 for=1h\n",
                          NULL);
    cy_snapshot s;
    cy_snapshot_init(&s, T0);
    add(&s, "cyan_shard_up", "shard=\"0\"", 0, T0);
    add(&s, "cyan_shard_up", "shard=\"1\"", 0, T0);
    assert_int_equal(cy_alerts_eval(e, &s, T0), 0);
    assert_int_equal(ntrans(e), 2);
    assert_int_equal(nactive(e), 4);
    cy_snapshot_reset(&s, T0 + 1000);
    add(&s, "cyan_shard_up", "shard=\"0\"", 0, T0);
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 1000), 0);
    /* shard 1 is gone: its firing alert resolves, its pending one goes quietly. */
    assert_int_equal(ntrans(e), 1);
    const cy_alert *a = trans(e, 0);
    assert_int_equal(a->state, CY_ALERT_RESOLVED);
    assert_string_equal(a->shard, "1");
    assert_int_equal(a->ends_at_ms, T0 + 1000);
    assert_string_equal(a->evidence, "cyan_shard_up{shard=\"1\"} is no longer reported");
    assert_int_equal(nactive(e), 2);
    cy_alerts_stats st;
    cy_alerts_stats_get(e, &st);
    assert_int_equal(st.instances, 2);
    /* It comes back: a new alert. */
    add(&s, "cyan_shard_up", "shard=\"1\"", 0, T0 + 2000);
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 2000), 0);
    assert_int_equal(ntrans(e), 1);
    assert_int_equal(trans(e, 0)->starts_at_ms, T0 + 2000);
    cy_snapshot_fini(&s);
    cy_alerts_free(e);
}

static void test_bounds(void **state)
{
    (void)state;
    cy_alerts_limits lim = {.max_instances = 2, .resolved_max = 2, .resolved_keep_ms = 10000};
    cy_alerts *e = engine("alert Down threshold cyan_shard_up == 0\n", &lim);
    cy_snapshot s;
    cy_snapshot_init(&s, T0);
    for (int i = 0; i < 3; i++) {
        char l[16];
        snprintf(l, sizeof(l), "shard=\"%d\"", i);
        add(&s, "cyan_shard_up", l, 0, T0);
    }
    assert_int_equal(cy_alerts_eval(e, &s, T0), 0);
    /* Two instances tracked; the third is refused, counted, and the first
     * two keep working. */
    assert_int_equal(ntrans(e), 2);
    cy_alerts_stats st;
    cy_alerts_stats_get(e, &st);
    assert_int_equal(st.instances, 2);
    assert_int_equal(st.instances_refused, 1);
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 1000), 0);
    cy_alerts_stats_get(e, &st);
    assert_int_equal(st.instances_refused, 2);
    /* One resolves: the third finds room. */
    s.v[0].value = 1;
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 2000), 0);
    assert_int_equal(ntrans(e), 1);
    assert_string_equal(trans(e, 0)->shard, "0");
    cy_alerts_stats_get(e, &st);
    assert_int_equal(st.instances, 2);
    /* Instances of series that stay are kept (0 is inactive but tracked). */
    assert_int_equal(st.firing, 1);
    /* Remove series 0: its instance goes at the end of this evaluation, so
     * series 2 gets the room at the next one. */
    s.v[0] = s.v[2];
    s.n = 2;
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 3000), 0);
    assert_int_equal(ntrans(e), 0);
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 3500), 0);
    assert_int_equal(ntrans(e), 1);
    assert_string_equal(trans(e, 0)->shard, "2");
    /* Resolved history: at most 2, the oldest goes first. */
    s.v[0].value = 1;
    s.v[1].value = 1;
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 4000), 0);
    assert_int_equal(ntrans(e), 2);
    size_t nr;
    const cy_alert *r = cy_alerts_resolved(e, &nr);
    assert_int_equal(nr, 2);
    assert_int_equal(r[0].ends_at_ms, T0 + 4000);
    assert_int_equal(r[1].ends_at_ms, T0 + 4000);
    /* and for at most resolved_keep_ms. */
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 14000), 0);
    cy_alerts_resolved(e, &nr);
    assert_int_equal(nr, 2);
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 14001), 0);
    cy_alerts_resolved(e, &nr);
    assert_int_equal(nr, 0);
    cy_snapshot_fini(&s);
    cy_alerts_free(e);
}

static void test_clock_back(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert X threshold m > 0 for=2s\n", NULL);
    eval1(e, T0, "m", "", 1, T0);
    eval1(e, T0 - 5000, "m", "", 1, T0); /* held at T0 */
    eval1(e, T0 + 1999, "m", "", 1, T0);
    assert_int_equal(active(e, 0)->state, CY_ALERT_PENDING);
    eval1(e, T0 + 2000, "m", "", 1, T0);
    assert_int_equal(active(e, 0)->state, CY_ALERT_FIRING);
    cy_alerts_free(e);
}

static void test_component_and_labels(void **state)
{
    (void)state;
    cy_alerts *e =
        engine("alert X threshold m > 0 component=shard "
               "summary=\"[{{shard}}] [{{labels.zone}}] [{{labels.none}}] {{ value }}\"\n",
               NULL);
    /* No shard label: component "mqtt"; a series label named like an alert
     * label is overridden. */
    eval1(e, T0, "m", "severity=\"x\",zone=\"a \\\"b\\\"\"", 1.25, T0);
    const cy_alert *a = trans(e, 0);
    assert_string_equal(a->component, "mqtt");
    assert_string_equal(a->labels, "alertname=\"X\",component=\"mqtt\",severity=\"warning\","
                                   "zone=\"a \\\"b\\\"\"");
    assert_string_equal(a->summary, "[] [a \"b\"] [] 1.25");
    /* Prometheus' fingerprint of {alertname, component, severity, zone}:
     * stable and equal for the same labels in another engine. */
    uint64_t fp = a->fingerprint;
    cy_alerts_free(e);
    e = engine("alert Test threshold m > 0 severity=critical\n", NULL);
    eval1(e, T0, "m", "shard=\"2\"", 1, T0);
    /* FNV-1a 64 of alertname\xffTest\xff component\xffshard-2\xff ... */
    assert_int_equal(trans(e, 0)->fingerprint, 0x329cd1c18cefbef8ULL);
    assert_true(fp != trans(e, 0)->fingerprint);
    cy_alerts_free(e);
}

static void test_value_format(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert X threshold m > 0 summary=\"{{value}}\"\n", NULL);
    struct {
        double v;
        const char *s;
    } c[] = {{3.1, "3.1"},       {10001, "10001"},   {1234.5, "1234.5"},
             {2.0 / 3, "0.667"}, {0.0001, "0.0001"}, {1e20, "100000000000000000000"}};
    for (size_t i = 0; i < 6; i++) {
        eval1(e, T0 + (int64_t)i * 10, "m", "", c[i].v, 0);
        assert_string_equal(active(e, 0)->summary, c[i].s);
    }
    cy_alerts_free(e);
}

static void test_time_format(void **state)
{
    (void)state;
    char t[40];
    cy_alert_time(T0, t, sizeof(t));
    assert_string_equal(t, "2026-12-04T10:02:03.120Z");
    cy_alert_time(0, t, sizeof(t));
    assert_string_equal(t, "1970-01-01T00:00:00.000Z");
    cy_alert_time(T0 + 5, t, sizeof(t));
    assert_string_equal(t, "2026-12-04T10:02:03.125Z");
}

/* ---- rules file ---------------------------------------------------------- */

static void expect_error(const char *text, const char *msg)
{
    cy_alert_rules *r = calloc(1, sizeof(*r));
    cy_alert_rules_defaults(r, NULL);
    size_t n0 = r->n;
    char err[256];
    assert_int_equal(cy_alert_rules_parse(r, text, "alerts.conf", err, sizeof(err)), CY_ECONFIG);
    if (strcmp(err, msg)) fail_msg("for %s\n got  %s\n want %s", text, err, msg);
    assert_int_equal(r->n, n0); /* unchanged */
    assert_non_null(cy_alert_rules_find(r, "CyanShardDown"));
    free(r);
}

static void test_parse_errors(void **state)
{
    (void)state;
    expect_error("# rules\n\nalert X treshold m > 1\n",
                 "alerts.conf:3: unknown kind 'treshold' (threshold, increase, staleness, absence, "
                 "flow, heartbeat)");
    expect_error("alert X threshold m >> 1",
                 "alerts.conf:1: unknown operator '>>' (> >= < <= == !=)");
    expect_error("alert X threshold m > one", "alerts.conf:1: bad number 'one'");
    expect_error("alert X threshold m >", "alerts.conf:1: missing number");
    expect_error("alert X threshold", "alerts.conf:1: missing series");
    expect_error("alert", "alerts.conf:1: missing alert name");
    expect_error("alert 9X heartbeat",
                 "alerts.conf:1: bad alert name '9X' (letters, digits, _; at most 63 bytes)");
    expect_error("alert X threshold m{shard=2} > 1", "alerts.conf:1: bad series 'm{shard=2}'");
    expect_error("alert X threshold m{shard=\"2\" > 1",
                 "alerts.conf:1: unterminated quote or brace");
    expect_error("alert X heartbeat summary=\"abc", "alerts.conf:1: unterminated quote or brace");
    expect_error("alert X threshold m > 1 for=2", "alerts.conf:1: bad duration '2' for for= (0, "
                                                  "500ms, 2s, 1m, 1h)");
    expect_error("alert X threshold m > 1 for=2d", "alerts.conf:1: bad duration '2d' for for= (0, "
                                                   "500ms, 2s, 1m, 1h)");
    expect_error("alert X threshold m > 1 for=-1s",
                 "alerts.conf:1: bad duration '-1s' for for= (0, "
                 "500ms, 2s, 1m, 1h)");
    expect_error("alert X threshold m > 1 window=1s",
                 "alerts.conf:1: window= applies to increase and flow only");
    expect_error("alert X increase m > 1", "alerts.conf:1: increase needs window=");
    expect_error("alert X flow a b", "alerts.conf:1: flow needs window=");
    expect_error("alert X flow a b{shard=\"1\"} window=1s",
                 "alerts.conf:1: bad output series 'b{shard=\"1\"}' (a name: it takes the input's "
                 "labels)");
    expect_error("alert X staleness m", "alerts.conf:1: staleness needs max_age=");
    expect_error("alert X absence m while=g", "alerts.conf:1: absence needs max_age=");
    expect_error("alert X heartbeat max_age=1s",
                 "alerts.conf:1: max_age= applies to staleness and absence only");
    expect_error("alert X heartbeat while=g", "alerts.conf:1: while= does not apply to heartbeat");
    expect_error("alert X heartbeat severity=high",
                 "alerts.conf:1: unknown severity 'high' (critical, warning, info)");
    expect_error("alert X heartbeat component=Shard",
                 "alerts.conf:1: bad component 'Shard' (lower case, digits, - and _)");
    expect_error("alert X heartbeat summary=\"{{shrad}} down\"",
                 "alerts.conf:1: unknown placeholder '{{shrad}}' in summary ({{shard}}, {{value}}, "
                 "{{alertname}}, {{component}}, {{severity}}, {{labels.NAME}})");
    expect_error("alert X heartbeat colour=red", "alerts.conf:1: unknown key 'colour'");
    expect_error("alert X heartbeat red", "alerts.conf:1: expected key=value, got 'red'");
    expect_error("alert X heartbeat for=1s for=2s", "alerts.conf:1: for= given twice");
    expect_error("alert X threshold m > 1 sum=maybe",
                 "alerts.conf:1: bad value 'maybe' for sum= (yes, no)");
    expect_error("alert X heartbeat\n# again\nalert X threshold m > 1\n",
                 "alerts.conf:3: alert X defined twice (first on line 1)");
    expect_error("disable CyanNope", "alerts.conf:1: disable: no rule named 'CyanNope'");
    expect_error("disable", "alerts.conf:1: disable needs a rule name");
    expect_error("disable CyanWatchdog CyanShardDown", "alerts.conf:1: disable takes one name");
    expect_error("alerts X heartbeat",
                 "alerts.conf:1: unknown directive 'alerts' (alert, disable)");
    /* Everything before the error is discarded too. */
    expect_error("disable CyanShardDown\nalert Y heartbeat\nbogus\n",
                 "alerts.conf:3: unknown directive 'bogus' (alert, disable)");
    /* Too many rules. */
    char *big = malloc(64 * 40);
    size_t o = 0;
    for (int i = 0; i < CY_ALERTS_MAX_RULES; i++)
        o += (size_t)sprintf(big + o, "alert R%d heartbeat\n", i);
    char want[64];
    snprintf(want, sizeof(want), "alerts.conf:%d: too many rules (at most %d)",
             CY_ALERTS_MAX_RULES - 9 + 1, CY_ALERTS_MAX_RULES); /* 9 defaults */
    expect_error(big, want);
    free(big);
    /* No file name. */
    cy_alert_rules r = {0};
    char err[128];
    assert_int_equal(cy_alert_rules_parse(&r, "x", NULL, err, sizeof(err)), CY_ECONFIG);
    assert_string_equal(err, "rules:1: unknown directive 'x' (alert, disable)");
}

static void test_parse_syntax(void **state)
{
    (void)state;
    cy_alert_rules *r = calloc(1, sizeof(*r));
    char err[256];
    assert_int_equal(
        cy_alert_rules_parse(r,
                             "  # comment line\n"
                             "alert A threshold cyan_x{step=\"call\", shard=\"1\"} >= -2.5e1 "
                             "for=500ms severity=critical component=api # trailing comment\n"
                             "\talert B staleness m{a=\"x y\\\"z\"} max_age=1m while=g sum=yes "
                             "summary=\"say \\\"{{value}}\\\" \\\\ ok\"\r\n"
                             "alert C flow in out window=1h severity=info\n"
                             "alert D absence c max_age=0 for=0\n"
                             "alert E increase c != 3 window=2s",
                             "f", err, sizeof(err)),
        0);
    assert_int_equal(r->n, 5);
    const cy_alert_rule *a = cy_alert_rules_find(r, "A");
    assert_non_null(a);
    assert_int_equal(a->kind, CY_ALERT_THRESHOLD);
    assert_string_equal(a->metric, "cyan_x");
    assert_string_equal(a->selector, "shard=\"1\",step=\"call\"");
    assert_int_equal(a->op, CY_ALERT_GE);
    assert_true(a->limit == -25);
    assert_int_equal(a->for_ms, 500);
    assert_int_equal(a->severity, CY_ALERT_CRITICAL);
    assert_string_equal(a->component, "api");
    const cy_alert_rule *b = cy_alert_rules_find(r, "B");
    assert_int_equal(b->kind, CY_ALERT_STALENESS);
    assert_string_equal(b->selector, "a=\"x y\\\"z\"");
    assert_int_equal(b->max_age_ms, 60000);
    assert_string_equal(b->guard, "g");
    assert_true(b->sum);
    assert_string_equal(b->summary, "say \"{{value}}\" \\ ok");
    assert_string_equal(b->component, "shard"); /* default */
    assert_int_equal(b->severity, CY_ALERT_WARNING);
    const cy_alert_rule *c = cy_alert_rules_find(r, "C");
    assert_int_equal(c->kind, CY_ALERT_FLOW);
    assert_string_equal(c->output, "out");
    assert_int_equal(c->window_ms, 3600000);
    assert_int_equal(c->severity, CY_ALERT_INFO);
    assert_int_equal(cy_alert_rules_find(r, "D")->max_age_ms, 0);
    assert_int_equal(cy_alert_rules_find(r, "E")->op, CY_ALERT_NE);
    assert_null(cy_alert_rules_find(r, "Z"));
    free(r);
}

static void test_defaults_replace_disable(void **state)
{
    (void)state;
    cy_alert_rules *r = calloc(1, sizeof(*r));
    cy_alert_rules_defaults(r, NULL);
    const char *names[] = {
        "CyanShardDown",       "CyanShardHeartbeatStale", "CyanShardNoProgress",
        "CyanShardRestarting", "CyanCanaryFailing",       "CyanMessageFlowStopped",
        "CyanMessagesDropped", "CyanSupervisorStale",     "CyanWatchdog"};
    assert_int_equal(r->n, 9);
    for (size_t i = 0; i < 9; i++)
        assert_non_null(cy_alert_rules_find(r, names[i]));
    char err[256];
    assert_int_equal(cy_alert_rules_parse(r,
                                          "alert CyanShardDown threshold cyan_shard_up == 0 "
                                          "for=30s severity=warning\n"
                                          "disable CyanWatchdog\n"
                                          "alert Mine heartbeat\n",
                                          "alerts.conf", err, sizeof(err)),
                     0);
    assert_int_equal(r->n, 9);
    assert_null(cy_alert_rules_find(r, "CyanWatchdog"));
    assert_int_equal(cy_alert_rules_find(r, "CyanShardDown")->for_ms, 30000);
    assert_int_equal(cy_alert_rules_find(r, "CyanShardDown")->severity, CY_ALERT_WARNING);
    assert_non_null(cy_alert_rules_find(r, "Mine"));
    /* The example of alerts.h. */
    assert_int_equal(
        cy_alert_rules_parse(
            r,
            "# page when a shard's backlog stays high\n"
            "alert CyanShardBacklogHigh threshold cyan_shard_backlog > 10000 for=30s\n"
            "alert CyanShard0Quiet absence cyan_publish_received_total{shard=\"0\"} max_age=1m\n"
            "disable CyanMessageFlowStopped\n",
            "alerts.conf", err, sizeof(err)),
        0);
    assert_int_equal(r->n, 10);
    assert_null(cy_alert_rules_find(r, "CyanMessageFlowStopped"));
    assert_string_equal(cy_alert_rules_find(r, "CyanShard0Quiet")->selector, "shard=\"0\"");
    assert_int_equal(cy_alert_rules_parse(r,
                                          "disable CyanShardBacklogHigh\ndisable CyanShard0Quiet",
                                          "b", err, sizeof(err)),
                     0);
    assert_int_equal(r->n, 8);
    /* Another text applies on top of what is there. */
    assert_int_equal(cy_alert_rules_parse(r, "disable Mine", "b", err, sizeof(err)), 0);
    assert_int_equal(r->n, 7);
    free(r);
}

static void test_load(void **state)
{
    (void)state;
    char path[] = "/tmp/test_alerts_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "alert A heartbeat\n\nalert B threshold m ! 1\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    cy_alert_rules *r = calloc(1, sizeof(*r));
    char err[256], want[300];
    assert_int_equal(cy_alert_rules_load(r, path, err, sizeof(err)), CY_ECONFIG);
    snprintf(want, sizeof(want), "%s:3: unknown operator '!' (> >= < <= == !=)", path);
    assert_string_equal(err, want);
    assert_int_equal(r->n, 0);
    FILE *f = fopen(path, "w");
    fputs("alert A heartbeat\n", f);
    fclose(f);
    assert_int_equal(cy_alert_rules_load(r, path, err, sizeof(err)), 0);
    assert_int_equal(r->n, 1);
    unlink(path);
    assert_int_equal(cy_alert_rules_load(r, path, err, sizeof(err)), CY_EIO);
    assert_non_null(strstr(err, "No such file"));
    free(r);
}

static void test_defaults_params(void **state)
{
    (void)state;
    cy_alert_rules *r = calloc(1, sizeof(*r));
    cy_alert_rules_defaults(r, NULL);
    assert_true(cy_alert_rules_find(r, "CyanShardHeartbeatStale")->limit == 1.0);
    assert_int_equal(cy_alert_rules_find(r, "CyanShardHeartbeatStale")->for_ms, 0);
    assert_int_equal(cy_alert_rules_find(r, "CyanShardNoProgress")->max_age_ms, 1000);
    assert_string_equal(cy_alert_rules_find(r, "CyanShardNoProgress")->guard, "cyan_shard_backlog");
    assert_int_equal(cy_alert_rules_find(r, "CyanShardDown")->for_ms, 5000);
    assert_int_equal(cy_alert_rules_find(r, "CyanCanaryFailing")->max_age_ms, 4000);
    assert_int_equal(cy_alert_rules_find(r, "CyanShardRestarting")->window_ms, 60000);
    assert_int_equal(cy_alert_rules_find(r, "CyanWatchdog")->severity, CY_ALERT_INFO);
    cy_alert_params p = {
        .watchdog_timeout_ms = 600, .canary_timeout_ms = 5000, .canary_interval_ms = 2000};
    cy_alert_rules_defaults(r, &p);
    assert_true(cy_alert_rules_find(r, "CyanShardHeartbeatStale")->limit == 0.3);
    assert_int_equal(cy_alert_rules_find(r, "CyanShardNoProgress")->max_age_ms, 300);
    assert_int_equal(cy_alert_rules_find(r, "CyanCanaryFailing")->max_age_ms, 7000);
    p.watchdog_timeout_ms = 10000;
    cy_alert_rules_defaults(r, &p);
    assert_true(cy_alert_rules_find(r, "CyanShardHeartbeatStale")->limit == 1.0);
    assert_int_equal(cy_alert_rules_find(r, "CyanShardDown")->for_ms, 25000);
    p.watchdog_timeout_ms = 100;
    cy_alert_rules_defaults(r, &p);
    assert_true(cy_alert_rules_find(r, "CyanShardHeartbeatStale")->limit == 0.25);
    /* Every default summary is a valid template (parse accepts it back). */
    for (size_t i = 0; i < r->n; i++) {
        char text[512], err[256];
        snprintf(text, sizeof(text), "alert X heartbeat summary=\"%s\"", r->v[i].summary);
        cy_alert_rules *t = calloc(1, sizeof(*t));
        assert_int_equal(cy_alert_rules_parse(t, text, "d", err, sizeof(err)), 0);
        free(t);
    }
    free(r);
}

/* The issue: an alert naming the stuck shard within 5 s of SIGSTOP, a
 * stall or a busy spin, with the defaults. Series as the monitor builds them
 * every second (with 37 ms of jitter), heartbeat ages as seen then. */
static void node(cy_snapshot *s, int64_t now, int stopped_shard, int64_t stop_at, int stalled_shard,
                 int64_t stall_at)
{
    cy_snapshot_reset(s, now);
    for (int i = 0; i < 4; i++) {
        char l[16];
        snprintf(l, sizeof(l), "shard=\"%d\"", i);
        bool stopped = i == stopped_shard && now >= stop_at;
        bool stalled = i == stalled_shard && now >= stall_at;
        double hb = stopped ? (double)(now - stop_at) / 1000.0 + 0.05 : 0.05;
        int64_t prog_ch = stopped ? stop_at : stalled ? stall_at : now - 10;
        add(s, "cyan_shard_up", l, 1, T0 - 60000);
        add(s, "cyan_shard_heartbeat_age_seconds", l, hb, now);
        add(s, "cyan_shard_progress_total", l, 1000, prog_ch);
        add(s, "cyan_shard_backlog", l, stopped || stalled ? 12 : (i == 0 ? 3 : 0), now - 500);
        add(s, "cyan_publish_received_total", l, 50, now - 10);
        add(s, "cyan_publish_sent_total", l, 50, now - 10);
        add(s, "cyan_subscriptions", l, 1, T0 - 60000);
        add(s, "cyan_messages_dropped_total", l, 0, T0 - 60000);
        char rl[48];
        snprintf(rl, sizeof(rl), "reason=\"hung\",shard=\"%d\"", i);
        add(s, "cyan_shard_restarts_total", rl, 0, T0 - 60000);
        snprintf(rl, sizeof(rl), "shard=\"%d\",step=\"publish\"", i);
        add(s, "cyan_canary_success_total", rl, (double)(now / 1000), now - 200);
    }
    add(s, "cyan_supervisor_heartbeat_age_seconds", NULL, 0.05, now);
}

static int64_t first_alert_for_shard(int stopped, int stalled, char name[CY_ALERT_NAME_MAX])
{
    cy_alert_rules *r = calloc(1, sizeof(*r));
    cy_alert_rules_defaults(r, NULL);
    cy_alerts *e;
    assert_int_equal(cy_alerts_new(&e, r, NULL), 0);
    free(r);
    cy_snapshot s;
    cy_snapshot_init(&s, 0);
    int64_t stop_at = T0 + 20000 + 400, found = -1;
    for (int k = 0; k < 30 && found < 0; k++) {
        int64_t now = T0 + k * 1000 + 37;
        node(&s, now, stopped, stop_at, stalled, stop_at);
        assert_int_equal(cy_alerts_eval(e, &s, now), 0);
        size_t n;
        const cy_alert *t = cy_alerts_transitions(e, &n);
        for (size_t i = 0; i < n; i++) {
            if (!strcmp(t[i].name, "CyanWatchdog")) continue;
            /* Nothing but the stuck shard ever alerts. */
            assert_true(now >= stop_at);
            assert_string_equal(t[i].shard, stopped >= 0 ? "2" : "1");
            assert_int_equal(t[i].severity, CY_ALERT_CRITICAL);
            if (found < 0) {
                found = now - stop_at;
                snprintf(name, CY_ALERT_NAME_MAX, "%s", t[i].name);
            }
        }
    }
    cy_snapshot_fini(&s);
    cy_alerts_free(e);
    return found;
}

static void test_defaults_name_stuck_shard(void **state)
{
    (void)state;
    char name[CY_ALERT_NAME_MAX];
    int64_t d = first_alert_for_shard(2, -1, name); /* SIGSTOP or spin: no heartbeat */
    assert_true(d >= 0 && d <= 5000);
    assert_string_equal(name, "CyanShardHeartbeatStale");
    d = first_alert_for_shard(-1, 1, name); /* stall: loop turns, backlog, no progress */
    assert_true(d >= 0 && d <= 5000);
    assert_string_equal(name, "CyanShardNoProgress");
}

/* ---- set_rules ------------------------------------------------------------ */

static void test_set_rules(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert Keep threshold m > 0\nalert Change threshold m > 0\n"
                          "alert Gone threshold m > 0 for=1h\n",
                          NULL);
    eval1(e, T0, "m", "", 1, T0);
    assert_int_equal(ntrans(e), 2);
    cy_alert_rules *r = rules_new("alert Keep threshold m > 0\nalert Change threshold m > 5\n");
    assert_int_equal(cy_alerts_set_rules(e, r), 0);
    free(r);
    eval1(e, T0 + 1000, "m", "", 1, T0);
    /* Change's old instance resolved (carried), Keep kept its state (no new
     * firing transition), Change's new rule is false. */
    assert_int_equal(ntrans(e), 1);
    assert_string_equal(trans(e, 0)->name, "Change");
    assert_int_equal(trans(e, 0)->state, CY_ALERT_RESOLVED);
    assert_int_equal(trans(e, 0)->ends_at_ms, T0);
    assert_non_null(strstr(trans(e, 0)->evidence, "(rule changed or removed)"));
    assert_int_equal(nactive(e), 1);
    assert_string_equal(active(e, 0)->name, "Keep");
    assert_int_equal(active(e, 0)->starts_at_ms, T0);
    size_t nr;
    cy_alerts_resolved(e, &nr);
    assert_int_equal(nr, 1);
    eval1(e, T0 + 2000, "m", "", 1, T0);
    assert_int_equal(ntrans(e), 0);
    cy_alerts_free(e);
}

/* ---- the webhook body ---------------------------------------------------- */

static void test_webhook_json(void **state)
{
    (void)state;
    cy_alerts *e = engine("alert Down threshold cyan_shard_up == 0 severity=critical "
                          "summary=\"shard {{shard}} down\"\n",
                          NULL);
    cy_snapshot s;
    cy_snapshot_init(&s, T0);
    add(&s, "cyan_shard_up", "shard=\"0\"", 0, T0);
    add(&s, "cyan_shard_up", "shard=\"1\"", 0, T0);
    add(&s, "cyan_shard_up", "shard=\"2\"", 1, T0);
    assert_int_equal(cy_alerts_eval(e, &s, T0), 0);
    s.v[0].value = 1;
    assert_int_equal(cy_alerts_eval(e, &s, T0 + 2500), 0);
    size_t nr, na;
    const cy_alert *res = cy_alerts_resolved(e, &nr);
    const cy_alert *act = cy_alerts_active(e, &na);
    assert_int_equal(nr, 1);
    assert_int_equal(na, 1);
    const cy_alert *group[] = {&res[0], &act[0]};
    const char *by[] = {"alertname", "shard", "alertname"};
    cy_alerts_webhook_opts o = {.receiver = "ops",
                                .external_url = "http://mon:9100",
                                .generator_url = "http://mon:9100/alerts",
                                .group_by = by,
                                .n_group_by = 3};
    char *body;
    size_t len;
    assert_int_equal(cy_alerts_webhook_json(group, 2, &o, &body, &len), 0);
    assert_int_equal(strlen(body), len);
    json_error_t jerr;
    json_t *j = json_loads(body, 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "receiver")), "ops");
    assert_string_equal(json_string_value(json_object_get(j, "status")), "firing");
    assert_string_equal(json_string_value(json_object_get(j, "version")), "4");
    assert_string_equal(json_string_value(json_object_get(j, "externalURL")), "http://mon:9100");
    assert_int_equal(json_integer_value(json_object_get(j, "truncatedAlerts")), 0);
    json_t *alerts = json_object_get(j, "alerts");
    assert_int_equal(json_array_size(alerts), 2);
    json_t *a0 = json_array_get(alerts, 0), *a1 = json_array_get(alerts, 1);
    assert_string_equal(json_string_value(json_object_get(a0, "status")), "resolved");
    assert_string_equal(json_string_value(json_object_get(a1, "status")), "firing");
    json_t *l0 = json_object_get(a0, "labels");
    assert_int_equal(json_object_size(l0), 4);
    assert_string_equal(json_string_value(json_object_get(l0, "alertname")), "Down");
    assert_string_equal(json_string_value(json_object_get(l0, "shard")), "0");
    assert_string_equal(json_string_value(json_object_get(l0, "component")), "shard-0");
    assert_string_equal(json_string_value(json_object_get(l0, "severity")), "critical");
    json_t *an0 = json_object_get(a0, "annotations");
    assert_string_equal(json_string_value(json_object_get(an0, "summary")), "shard 0 down");
    assert_string_equal(json_string_value(json_object_get(an0, "evidence")),
                        "cyan_shard_up{shard=\"0\"} = 0 since 2026-12-04T10:02:03.120Z");
    assert_string_equal(json_string_value(json_object_get(a0, "startsAt")),
                        "2026-12-04T10:02:03.120Z");
    assert_string_equal(json_string_value(json_object_get(a0, "endsAt")),
                        "2026-12-04T10:02:05.620Z");
    assert_string_equal(json_string_value(json_object_get(a1, "endsAt")), "0001-01-01T00:00:00Z");
    assert_string_equal(json_string_value(json_object_get(a1, "generatorURL")),
                        "http://mon:9100/alerts");
    char fp[20];
    snprintf(fp, sizeof(fp), "%016llx", (unsigned long long)res[0].fingerprint);
    assert_string_equal(json_string_value(json_object_get(a0, "fingerprint")), fp);
    assert_int_equal(strlen(fp), 16);
    /* Common labels: what both share; shard differs, so not a group label. */
    json_t *cl = json_object_get(j, "commonLabels");
    assert_int_equal(json_object_size(cl), 2);
    assert_string_equal(json_string_value(json_object_get(cl, "alertname")), "Down");
    assert_string_equal(json_string_value(json_object_get(cl, "severity")), "critical");
    json_t *ca = json_object_get(j, "commonAnnotations");
    assert_int_equal(json_object_size(ca), 0);
    json_t *gl = json_object_get(j, "groupLabels");
    assert_int_equal(json_object_size(gl), 1);
    assert_string_equal(json_string_value(json_object_get(gl, "alertname")), "Down");
    assert_string_equal(json_string_value(json_object_get(j, "groupKey")),
                        "{}:{alertname=\"Down\"}");
    json_decref(j);
    cy_free(body);

    /* Only resolved: status resolved; truncation; defaults for NULL options. */
    const cy_alert *only[] = {&res[0], &act[0], &act[0]};
    assert_int_equal(cy_alerts_webhook_json(only, 1, NULL, &body, &len), 0);
    j = json_loads(body, 0, &jerr);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "resolved");
    assert_string_equal(json_string_value(json_object_get(j, "receiver")), "cyan");
    assert_string_equal(json_string_value(json_object_get(j, "groupKey")), "{}:{}");
    assert_int_equal(json_object_size(json_object_get(j, "commonAnnotations")), 2);
    json_decref(j);
    cy_free(body);
    cy_alerts_webhook_opts t = {.max_alerts = 1, .group_by = by, .n_group_by = 2};
    assert_int_equal(cy_alerts_webhook_json(&only[1], 2, &t, &body, &len), 0);
    j = json_loads(body, 0, &jerr);
    assert_int_equal(json_array_size(json_object_get(j, "alerts")), 1);
    assert_int_equal(json_integer_value(json_object_get(j, "truncatedAlerts")), 1);
    assert_string_equal(json_string_value(json_object_get(j, "groupKey")),
                        "{}:{alertname=\"Down\", shard=\"1\"}");
    json_decref(j);
    cy_free(body);
    /* Nothing to send. */
    cy_alert pend = act[0];
    pend.state = CY_ALERT_PENDING;
    const cy_alert *p1[] = {&pend};
    body = (char *)1;
    assert_int_equal(cy_alerts_webhook_json(p1, 1, NULL, &body, &len), CY_EINVAL);
    assert_null(body);
    assert_int_equal(cy_alerts_webhook_json(p1, 0, NULL, &body, &len), CY_EINVAL);
    cy_snapshot_fini(&s);
    cy_alerts_free(e);
}

/* ---- allocation failures -------------------------------------------------- */

static void test_alloc_failures(void **state)
{
    (void)state;
    cy_alert_rules *r = calloc(1, sizeof(*r));
    cy_alert_rules_defaults(r, NULL);
    cy_snapshot s;
    cy_snapshot_init(&s, 0);
    node(&s, T0, 2, T0 - 3000, -1, 0);
    /* What two evaluations give when nothing fails. */
    size_t ref_firing;
    {
        cy_alert_rules *r2 = calloc(1, sizeof(*r2));
        *r2 = *r;
        char err[128];
        assert_int_equal(cy_alert_rules_parse(r2, "alert X heartbeat\n", "f", err, sizeof(err)), 0);
        cy_alerts *e;
        assert_int_equal(cy_alerts_new(&e, r2, NULL), 0);
        assert_int_equal(cy_alerts_eval(e, &s, T0), 0);
        assert_int_equal(cy_alerts_eval(e, &s, T0 + 1000), 0);
        cy_alerts_stats st;
        cy_alerts_stats_get(e, &st);
        ref_firing = st.firing;
        assert_true(ref_firing >= 3);
        cy_alerts_free(e);
        free(r2);
    }
    int ok = 0, refused = 0;
    for (long n = 0; n < 60; n++) {
        cy_alerts *e = NULL;
        cy_alert_rules *r2 = calloc(1, sizeof(*r2));
        *r2 = *r;
        char err[128];
        cy_alloc_fail_after(n);
        int rc = cy_alert_rules_parse(r2, "alert X heartbeat\n", "f", err, sizeof(err));
        if (rc == 0) rc = cy_alerts_new(&e, r2, NULL);
        if (rc == 0) rc = cy_alerts_eval(e, &s, T0);
        char *body = NULL;
        size_t len, na;
        if (rc == 0) {
            const cy_alert *a = cy_alerts_active(e, &na);
            const cy_alert *g[] = {&a[0], &a[1]};
            rc = cy_alerts_webhook_json(g, 2, NULL, &body, &len);
        }
        cy_alloc_fail_after(-1);
        if (e && rc == CY_ENOMEM) {
            /* A refused instance was skipped and counted; the next
             * evaluation adds it and reports its transition. */
            cy_alerts_stats st;
            cy_alerts_stats_get(e, &st);
            if (st.instances_refused) {
                refused++;
                assert_int_equal(cy_alerts_eval(e, &s, T0 + 1000), 0);
                cy_alerts_stats_get(e, &st);
                assert_int_equal(st.firing, ref_firing); /* as if nothing failed */
            }
        }
        assert_true(rc == 0 || rc == CY_ENOMEM);
        if (rc == 0) ok++;
        cy_free(body);
        cy_alerts_free(e);
        free(r2);
    }
    assert_true(ok > 0);
    assert_true(refused > 0); /* the walk reached an evaluation's growth */
    cy_snapshot_fini(&s);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threshold_lifecycle),
        cmocka_unit_test(test_threshold_ops_and_for0),
        cmocka_unit_test(test_selector_and_instances),
        cmocka_unit_test(test_staleness),
        cmocka_unit_test(test_staleness_unknown_changed),
        cmocka_unit_test(test_absence),
        cmocka_unit_test(test_absence_guard),
        cmocka_unit_test(test_flow),
        cmocka_unit_test(test_flow_sum),
        cmocka_unit_test(test_increase),
        cmocka_unit_test(test_increase_long_window),
        cmocka_unit_test(test_heartbeat),
        cmocka_unit_test(test_disappearing_series),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_clock_back),
        cmocka_unit_test(test_component_and_labels),
        cmocka_unit_test(test_value_format),
        cmocka_unit_test(test_time_format),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_syntax),
        cmocka_unit_test(test_defaults_replace_disable),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_defaults_params),
        cmocka_unit_test(test_defaults_name_stuck_shard),
        cmocka_unit_test(test_set_rules),
        cmocka_unit_test(test_webhook_json),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
