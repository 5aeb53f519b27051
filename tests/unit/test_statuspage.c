/* Tests of the status page (src/status/statuspage.c) and of its durable
 * record (src/status/statusdb.c).
 *
 * statuspage: component statuses derived from alerts (one shard down
 * among four, all down, warnings only, per-component alerts, the call
 * canary of one shard, labels that name nothing), updated_ms moving only
 * on a change; HTML escaping of everything taken from the model; the JSON
 * documents parsed back with jansson and checked field by field; every
 * allocation failure of the renderers leaving nothing appended.
 *
 * statusdb: the alert-driven incident flow (open, dedupe by fingerprint,
 * join by component, cleared, resolved automatically, fired again after),
 * operators' incidents and updates (monitoring, resolve, reopen), listing
 * order, the timeline's order, filters and trimming (by count and by age,
 * also at open), starts and deploys, reconciling the firing set, reopening
 * the file (durability, dedupe across a restart), rejected input (nothing
 * written), and a full file (CY_ENOSPC, reads go on, nothing half-written).
 */
#include "store_testlib.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "status/statusdb.h"
#include "status/statuspage.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* 2023-11-14T22:13:20.123Z */
#define T0 1700000000123LL
#define MIN (60 * 1000LL)
#define HOUR (60 * MIN)

/* ---- derivation ---- */

static cy_status_alert alert(const char *name, const char *sev, const char *comp, const char *shard)
{
    return (cy_status_alert){.fingerprint = name,
                             .alertname = name,
                             .severity = sev,
                             .component = comp,
                             .shard = shard,
                             .summary = "s",
                             .since_ms = T0};
}

static int status_of(const cy_status_components *c, const char *id)
{
    const cy_status_component *x = cy_status_component_find(c, id);
    assert_non_null(x);
    return x->status;
}

static void test_derive_one_shard_down(void **state)
{
    (void)state;
    cy_status_components c;
    assert_int_equal(cy_status_components_init(&c, 4, T0), 0);
    assert_int_equal(c.n, 8);
    assert_string_equal(c.v[0].id, "mqtt");
    assert_string_equal(c.v[4].id, "shard-0");
    assert_string_equal(c.v[7].id, "shard-3");
    assert_int_equal(c.v[7].position, 8);
    cy_status_alert a[] = {alert("ShardHung", "critical", "mqtt", "2")};
    cy_status_derive(&c, a, 1, T0 + 1000);
    assert_int_equal(status_of(&c, "shard-2"), CY_COMPONENT_MAJOR_OUTAGE);
    assert_int_equal(status_of(&c, "shard-0"), CY_COMPONENT_OPERATIONAL);
    assert_int_equal(status_of(&c, "shard-1"), CY_COMPONENT_OPERATIONAL);
    assert_int_equal(status_of(&c, "shard-3"), CY_COMPONENT_OPERATIONAL);
    assert_int_equal(status_of(&c, "mqtt"), CY_COMPONENT_PARTIAL_OUTAGE);
    assert_int_equal(status_of(&c, "api"), CY_COMPONENT_PARTIAL_OUTAGE);
    assert_int_equal(status_of(&c, "webhooks"), CY_COMPONENT_DEGRADED);
    assert_int_equal(status_of(&c, "monitor"), CY_COMPONENT_OPERATIONAL);
    assert_int_equal(c.indicator, CY_INDICATOR_MAJOR);
    assert_string_equal(c.description, "Partial System Outage");
    /* Only what changed moved. */
    assert_int_equal(cy_status_component_find(&c, "shard-2")->updated_ms, T0 + 1000);
    assert_int_equal(cy_status_component_find(&c, "shard-0")->updated_ms, T0);
    assert_int_equal(cy_status_component_find(&c, "monitor")->updated_ms, T0);
    /* The same alerts again: nothing moves. */
    cy_status_derive(&c, a, 1, T0 + 2000);
    assert_int_equal(cy_status_component_find(&c, "shard-2")->updated_ms, T0 + 1000);
    /* It clears: back to operational, at that time. */
    cy_status_derive(&c, NULL, 0, T0 + 3000);
    for (size_t i = 0; i < c.n; i++)
        assert_int_equal(c.v[i].status, CY_COMPONENT_OPERATIONAL);
    assert_int_equal(cy_status_component_find(&c, "shard-2")->updated_ms, T0 + 3000);
    assert_int_equal(cy_status_component_find(&c, "mqtt")->updated_ms, T0 + 3000);
    assert_int_equal(c.indicator, CY_INDICATOR_NONE);
    assert_string_equal(c.description, "All Systems Operational");
}

static void test_derive_all_down(void **state)
{
    (void)state;
    cy_status_components c;
    assert_int_equal(cy_status_components_init(&c, 4, T0), 0);
    cy_status_alert a[] = {
        alert("ShardDown", "critical", "mqtt", "0"), alert("ShardDown", "critical", "mqtt", "1"),
        alert("ShardDown", "critical", "", "2"),
        alert("ShardDown", "critical", "shard-3", ""), /* the component names the shard */
    };
    cy_status_derive(&c, a, 4, T0);
    for (int k = 0; k < 4; k++) {
        char id[16];
        snprintf(id, sizeof(id), "shard-%d", k);
        assert_int_equal(status_of(&c, id), CY_COMPONENT_MAJOR_OUTAGE);
    }
    assert_int_equal(status_of(&c, "mqtt"), CY_COMPONENT_MAJOR_OUTAGE);
    assert_int_equal(status_of(&c, "api"), CY_COMPONENT_MAJOR_OUTAGE);
    assert_int_equal(status_of(&c, "webhooks"), CY_COMPONENT_MAJOR_OUTAGE);
    assert_int_equal(status_of(&c, "monitor"), CY_COMPONENT_OPERATIONAL);
    assert_int_equal(c.indicator, CY_INDICATOR_CRITICAL);
    assert_string_equal(c.description, "Major System Outage");
    /* Three of four: partial again. */
    cy_status_derive(&c, a, 3, T0);
    assert_int_equal(status_of(&c, "mqtt"), CY_COMPONENT_PARTIAL_OUTAGE);
    assert_int_equal(c.indicator, CY_INDICATOR_MAJOR);
}

static void test_derive_warnings(void **state)
{
    (void)state;
    cy_status_components c;
    assert_int_equal(cy_status_components_init(&c, 4, T0), 0);
    cy_status_alert a[] = {
        alert("BacklogGrowing", "warning", "mqtt", "1"),
        alert("BacklogGrowing", "warning", "mqtt", "3"),
        alert("Note", "info", "mqtt", "0"), /* info changes nothing */
    };
    cy_status_derive(&c, a, 3, T0);
    assert_int_equal(status_of(&c, "shard-1"), CY_COMPONENT_DEGRADED);
    assert_int_equal(status_of(&c, "shard-3"), CY_COMPONENT_DEGRADED);
    assert_int_equal(status_of(&c, "shard-0"), CY_COMPONENT_OPERATIONAL);
    assert_int_equal(status_of(&c, "mqtt"), CY_COMPONENT_DEGRADED);
    assert_int_equal(status_of(&c, "api"), CY_COMPONENT_OPERATIONAL);
    assert_int_equal(status_of(&c, "webhooks"), CY_COMPONENT_OPERATIONAL);
    assert_int_equal(c.indicator, CY_INDICATOR_MINOR);
    assert_string_equal(c.description, "Partially Degraded Service");
    /* A warning and a critical on one shard: the worse wins. */
    cy_status_alert b[] = {alert("A", "warning", "mqtt", "1"), alert("B", "critical", "mqtt", "1")};
    cy_status_derive(&c, b, 2, T0);
    assert_int_equal(status_of(&c, "shard-1"), CY_COMPONENT_MAJOR_OUTAGE);
}

static void test_derive_components(void **state)
{
    (void)state;
    cy_status_components c;
    assert_int_equal(cy_status_components_init(&c, 2, T0), 0);
    /* The call canary of shard 1 fails: shard-1 down, the API partly. */
    cy_status_alert a[] = {alert("CanaryCallFailing", "critical", "api", "1")};
    cy_status_derive(&c, a, 1, T0);
    assert_int_equal(status_of(&c, "shard-1"), CY_COMPONENT_MAJOR_OUTAGE);
    assert_int_equal(status_of(&c, "api"), CY_COMPONENT_PARTIAL_OUTAGE);
    assert_int_equal(status_of(&c, "mqtt"), CY_COMPONENT_PARTIAL_OUTAGE);
    /* The API itself down: critical. */
    cy_status_alert b[] = {alert("ApiDown", "critical", "api", "")};
    cy_status_derive(&c, b, 1, T0);
    assert_int_equal(status_of(&c, "api"), CY_COMPONENT_MAJOR_OUTAGE);
    assert_int_equal(status_of(&c, "mqtt"), CY_COMPONENT_OPERATIONAL);
    assert_int_equal(c.indicator, CY_INDICATOR_CRITICAL);
    /* Webhooks down alone: a partial system outage of the page. */
    cy_status_alert d[] = {alert("WebhooksFailing", "critical", "webhooks", "")};
    cy_status_derive(&c, d, 1, T0);
    assert_int_equal(status_of(&c, "webhooks"), CY_COMPONENT_MAJOR_OUTAGE);
    assert_int_equal(c.indicator, CY_INDICATOR_MAJOR);
    assert_string_equal(c.description, "Partial System Outage");
    /* The monitor degraded. */
    cy_status_alert e[] = {alert("CanaryStale", "warning", "monitor", "")};
    cy_status_derive(&c, e, 1, T0);
    assert_int_equal(status_of(&c, "monitor"), CY_COMPONENT_DEGRADED);
    assert_int_equal(c.indicator, CY_INDICATOR_MINOR);
    /* Labels that name nothing on this page change nothing. */
    cy_status_alert f[] = {
        alert("X", "critical", "database", ""), alert("Y", "critical", "mqtt", "7"),
        alert("Z", "critical", "shard-9", ""),  alert("W", "critical", "mqtt", "1x"),
        alert("V", "fatal", "api", ""),         alert("U", NULL, "api", ""),
        alert("T", "critical", "mqtt", "01"),
    };
    cy_status_derive(&c, f, 7, T0);
    for (size_t i = 0; i < c.n; i++)
        assert_int_equal(c.v[i].status, CY_COMPONENT_OPERATIONAL);
    assert_int_equal(c.indicator, CY_INDICATOR_NONE);
    /* Every component degraded. */
    cy_status_alert g[] = {
        alert("a", "warning", "mqtt", ""),     alert("b", "warning", "api", ""),
        alert("c", "warning", "webhooks", ""), alert("d", "warning", "monitor", ""),
        alert("e", "warning", "", "0"),        alert("f", "warning", "", "1")};
    cy_status_derive(&c, g, 6, T0);
    assert_string_equal(c.description, "Degraded System Service");

    assert_int_equal(cy_status_components_init(&c, 0, T0), CY_EINVAL);
    assert_int_equal(cy_status_components_init(&c, CY_STATUS_SHARDS_MAX + 1, T0), CY_EINVAL);
    assert_int_equal(cy_status_components_init(&c, CY_STATUS_SHARDS_MAX, T0), 0);
    assert_int_equal(c.n, CY_STATUS_COMPONENTS_MAX);
    assert_string_equal(c.v[c.n - 1].id, "shard-63");
    assert_null(cy_status_component_find(&c, "shard-64"));
    assert_null(cy_status_component_find(&c, NULL));
}

/* ---- a model for the renderers ---- */

static char body1[] = "ShardHung (critical) has been firing: shard 2 <b>hung</b>";
static char body2[] = "We found it & are \"fixing\" it";
static char body3[] = "Done.";
static char name1[] = "Shard 2 hung <script>alert(1)</script>";
static char name2[] = "Old one";
static char text1[] = "deploy: node runs cyan 1.2.0 (commit abc)";
static char text2[] = "ShardHung firing (critical): <script>x</script>";
static char text3[] = "ShardHung resolved after 3 min 0 s";
static char details2[] = "{\"alertname\":\"ShardHung\",\"severity\":\"critical\","
                         "\"fingerprint\":\"fp1\"}";
static char details3[] = "{\"alertname\":\"ShardHung\",\"fingerprint\":\"fp1\"}";

typedef struct model_fixture {
    cy_status_components c;
    cy_status_alert alerts[2];
    cy_incident_update u1[2], u2[1];
    cy_incident inc[2];
    cy_timeline_event ev[3];
    cy_status_model m;
} model_fixture;

static void build_model(model_fixture *f)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(cy_status_components_init(&f->c, 4, T0 - HOUR), 0);
    f->alerts[0] =
        (cy_status_alert){.fingerprint = "fp1",
                          .alertname = "ShardHung",
                          .severity = "critical",
                          .component = "mqtt",
                          .shard = "2",
                          .summary = "<script>alert('x')</script> & more",
                          .evidence = "cyan_shard_heartbeat_age_seconds{shard=\"2\"} = 3.1",
                          .since_ms = T0 - 5 * MIN};
    /* Not UTF-8: \xff and a lone continuation byte. */
    f->alerts[1] = (cy_status_alert){.fingerprint = "fp2",
                                     .alertname = "Odd\xff",
                                     .severity = "warning",
                                     .component = "api",
                                     .summary = "bad \x80 bytes",
                                     .since_ms = T0 - MIN};
    cy_status_derive(&f->c, f->alerts, 2, T0 - 4 * MIN);
    f->u1[0] = (cy_incident_update){.id = 12,
                                    .incident_id = 7,
                                    .status = CY_INCIDENT_IDENTIFIED,
                                    .body = body2,
                                    .created_ms = T0 - MIN};
    f->u1[1] = (cy_incident_update){.id = 11,
                                    .incident_id = 7,
                                    .status = CY_INCIDENT_INVESTIGATING,
                                    .body = body1,
                                    .created_ms = T0 - 4 * MIN};
    f->inc[0] = (cy_incident){.id = 7,
                              .name = name1,
                              .status = CY_INCIDENT_IDENTIFIED,
                              .impact = CY_IMPACT_MAJOR,
                              .ncomponents = 1,
                              .started_ms = T0 - 5 * MIN,
                              .created_ms = T0 - 4 * MIN,
                              .updated_ms = T0 - MIN,
                              .updates = f->u1,
                              .nupdates = 2};
    strcpy(f->inc[0].components[0], "shard-2");
    f->u2[0] = (cy_incident_update){.id = 3,
                                    .incident_id = 2,
                                    .status = CY_INCIDENT_RESOLVED,
                                    .body = body3,
                                    .created_ms = T0 - 2 * HOUR};
    f->inc[1] = (cy_incident){.id = 2,
                              .name = name2,
                              .status = CY_INCIDENT_RESOLVED,
                              .impact = CY_IMPACT_MINOR,
                              .started_ms = T0 - 3 * HOUR,
                              .created_ms = T0 - 3 * HOUR,
                              .updated_ms = T0 - 2 * HOUR,
                              .monitoring_ms = T0 - 150 * MIN,
                              .resolved_ms = T0 - 2 * HOUR,
                              .updates = f->u2,
                              .nupdates = 1};
    f->ev[0] = (cy_timeline_event){.id = 30,
                                   .time_ms = T0 - 2 * MIN,
                                   .kind = CY_TL_ALERT_RESOLVED,
                                   .text = text3,
                                   .details = details3};
    strcpy(f->ev[0].component, "shard-2");
    f->ev[1] = (cy_timeline_event){.id = 29,
                                   .time_ms = T0 - 5 * MIN,
                                   .kind = CY_TL_ALERT_FIRING,
                                   .text = text2,
                                   .details = details2};
    strcpy(f->ev[1].component, "shard-2");
    f->ev[2] = (cy_timeline_event){
        .id = 28, .time_ms = T0 - 20 * MIN, .kind = CY_TL_DEPLOY, .text = text1};
    f->m = (cy_status_model){
        .page = {.id = "node-1",
                 .name = "cyan <test>",
                 .url = "https://status.example/status",
                 .version = "1.2.0",
                 .commit = "abc",
                 .created_ms = T0 - 2 * HOUR,
                 .now_ms = T0,
                 .refresh_s = 5},
        .components = &f->c,
        .alerts = f->alerts,
        .nalerts = 2,
        .incidents = f->inc,
        .nincidents = 2,
        .events = f->ev,
        .nevents = 3,
    };
}

static char *buf_str(cy_buf *b)
{
    assert_int_equal(cy_buf_append(b, "", 1), 0);
    b->len--;
    return (char *)cy_buf_head(b);
}

/* ---- HTML ---- */

static void test_html_escape(void **state)
{
    (void)state;
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_status_html_escape(&b, "a<b>&\"c'\x01\n\td\x7f\xc3\xa9\xff."), 0);
    assert_string_equal(buf_str(&b), "a&lt;b&gt;&amp;&quot;c&#39;\n\td\xc3\xa9\xef\xbf\xbd.");
    cy_buf_reset(&b);
    assert_int_equal(cy_status_html_escape(&b, NULL), 0);
    assert_int_equal(cy_buf_size(&b), 0);
    /* Overlong and surrogate forms are not UTF-8. */
    assert_int_equal(cy_status_html_escape(&b, "\xc0\xaf\xed\xa0\x80"), 0);
    assert_string_equal(buf_str(&b),
                        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    cy_buf_fini(&b);
}

static void test_html_page(void **state)
{
    (void)state;
    model_fixture *f = malloc(sizeof(*f));
    assert_non_null(f);
    build_model(f);
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_status_render_html(&f->m, &b), 0);
    const char *h = buf_str(&b);
    /* No script anywhere: every <script> of the model is escaped. */
    assert_null(strstr(h, "<script"));
    assert_non_null(strstr(h, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more"));
    assert_non_null(strstr(h, "Shard 2 hung &lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_non_null(strstr(h, "ShardHung firing (critical): &lt;script&gt;x&lt;/script&gt;"));
    assert_non_null(strstr(h, "<title>cyan &lt;test&gt; status</title>"));
    assert_non_null(strstr(h, "shard 2 &lt;b&gt;hung&lt;/b&gt;"));
    assert_non_null(strstr(h, "We found it &amp; are &quot;fixing&quot; it"));
    assert_non_null(strstr(h, "cyan_shard_heartbeat_age_seconds{shard=&quot;2&quot;} = 3.1"));
    assert_non_null(strstr(h, "Odd\xef\xbf\xbd"));
    assert_null(strstr(h, "\xff"));
    /* Banner, components, refresh, incidents, timeline. */
    assert_non_null(strstr(h, "<meta http-equiv=\"refresh\" content=\"5\">"));
    assert_non_null(strstr(h, "<p class=\"banner ind-major\">Partial System Outage</p>"));
    assert_non_null(strstr(h, "<tr class=\"st-major_outage\" id=\"component-shard-2\">"));
    assert_non_null(strstr(h, "<tr class=\"st-operational\" id=\"component-shard-3\">"));
    assert_non_null(strstr(h, "<tr class=\"st-partial_outage\" id=\"component-mqtt\">"));
    assert_non_null(strstr(h, "Alerts firing (2)"));
    assert_non_null(strstr(h, "<article id=\"incident-7\">"));
    assert_non_null(strstr(h, "<details id=\"incident-2\">"));
    assert_non_null(strstr(h, "<tr class=\"k-deploy\">"));
    assert_non_null(strstr(h, "<line class=\"deploy\""));
    assert_non_null(strstr(h, "class=\"bar-critical\""));
    assert_non_null(strstr(h, "<time datetime=\"2023-11-14T22:13:20.123Z\">"));
    assert_non_null(strstr(h, "cyan 1.2.0 (abc)"));
    assert_non_null(strstr(h, "</html>"));
    /* The newer update is listed first. */
    assert_true(strstr(h, "We found it") < strstr(h, "shard 2 &lt;b&gt;"));
    /* The deploy (20 min ago) is drawn left of the alert's bar (5 min ago). */
    const char *deploy = strstr(h, "<line class=\"deploy\" x1=\"");
    const char *bar = strstr(h, "class=\"bar-critical\" x=\"");
    double xd = strtod(deploy + strlen("<line class=\"deploy\" x1=\""), NULL);
    double xb = strtod(bar + strlen("class=\"bar-critical\" x=\""), NULL);
    assert_true(xd < xb);

    /* An empty page. */
    cy_status_model empty = {.page = {.now_ms = T0}, .components = &f->c};
    cy_status_components_init(&f->c, 1, T0);
    cy_buf_reset(&b);
    assert_int_equal(cy_status_render_html(&empty, &b), 0);
    h = buf_str(&b);
    assert_non_null(strstr(h, "All Systems Operational"));
    assert_non_null(strstr(h, "No alert is firing."));
    assert_non_null(strstr(h, "No open incident."));
    assert_non_null(strstr(h, "No event recorded."));
    assert_null(strstr(h, "http-equiv"));
    assert_int_equal(cy_status_render_html(NULL, &b), CY_EINVAL);
    empty.components = NULL;
    assert_int_equal(cy_status_render_html(&empty, &b), CY_EINVAL);
    cy_buf_fini(&b);
    free(f);
}

/* Every allocation failure of a renderer: CY_ENOMEM and nothing appended. */
static void test_render_alloc_failures(void **state)
{
    (void)state;
    model_fixture *f = malloc(sizeof(*f));
    assert_non_null(f);
    build_model(f);
    int (*render[])(const cy_status_model *,
                    cy_buf *) = {cy_status_render_html, cy_status_render_summary,
                                 cy_status_render_incidents, cy_status_render_timeline};
    for (size_t r = 0; r < 4; r++) {
        int failures = 0;
        for (long n = 0;; n++) {
            cy_buf b;
            cy_buf_init(&b);
            assert_int_equal(cy_buf_append(&b, "keep", 4), 0);
            cy_alloc_fail_after(n);
            int rc = render[r](&f->m, &b);
            cy_alloc_fail_after(-1);
            if (rc == 0) {
                assert_true(cy_buf_size(&b) > 4);
                cy_buf_fini(&b);
                break;
            }
            assert_int_equal(rc, CY_ENOMEM);
            assert_int_equal(cy_buf_size(&b), 4);
            assert_memory_equal(cy_buf_head(&b), "keep", 4);
            cy_buf_fini(&b);
            failures++;
            assert_true(n < 10000);
        }
        assert_true(failures > 0); /* the walk did meet an allocation */
    }
    free(f);
}

/* ---- JSON ---- */

static json_t *parse(cy_buf *b)
{
    json_error_t err;
    json_t *j = json_loadb((const char *)cy_buf_head(b), cy_buf_size(b), 0, &err);
    if (!j) fail_msg("bad JSON: %s at %d", err.text, err.position);
    return j;
}

static const char *sget(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) fail_msg("%s is not a string", key);
    return json_string_value(v);
}

static void check_page(json_t *page)
{
    assert_true(json_is_object(page));
    assert_string_equal(sget(page, "id"), "node-1");
    assert_string_equal(sget(page, "name"), "cyan <test>");
    assert_string_equal(sget(page, "url"), "https://status.example/status");
    assert_string_equal(sget(page, "time_zone"), "Etc/UTC");
    /* The latest change: incident 7's last update, one minute ago. */
    assert_string_equal(sget(page, "updated_at"), "2023-11-14T22:12:20.123Z");
}

static void test_json_summary(void **state)
{
    (void)state;
    model_fixture *f = malloc(sizeof(*f));
    assert_non_null(f);
    build_model(f);
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_status_render_summary(&f->m, &b), 0);
    json_t *j = parse(&b);
    check_page(json_object_get(j, "page"));
    json_t *st = json_object_get(j, "status");
    assert_string_equal(sget(st, "indicator"), "major");
    assert_string_equal(sget(st, "description"), "Partial System Outage");
    json_t *comps = json_object_get(j, "components");
    assert_int_equal(json_array_size(comps), 8);
    const char *order[] = {"mqtt",    "api",     "webhooks", "monitor",
                           "shard-0", "shard-1", "shard-2",  "shard-3"};
    for (size_t i = 0; i < 8; i++) {
        json_t *c = json_array_get(comps, i);
        assert_string_equal(sget(c, "id"), order[i]);
        assert_int_equal(json_integer_value(json_object_get(c, "position")), i + 1);
        assert_string_equal(sget(c, "page_id"), "node-1");
        assert_string_equal(sget(c, "created_at"), "2023-11-14T20:13:20.123Z");
        assert_true(json_is_false(json_object_get(c, "group")));
        assert_true(json_is_false(json_object_get(c, "only_show_if_degraded")));
        assert_true(json_is_boolean(json_object_get(c, "showcase")));
        assert_true(json_is_null(json_object_get(c, "group_id")));
        assert_true(json_is_string(json_object_get(c, "name")));
        assert_true(json_is_string(json_object_get(c, "description")));
    }
    json_t *s2 = json_array_get(comps, 6);
    assert_string_equal(sget(s2, "name"), "Shard 2");
    assert_string_equal(sget(s2, "status"), "major_outage");
    assert_string_equal(sget(s2, "updated_at"), "2023-11-14T22:09:20.123Z");
    assert_string_equal(sget(json_array_get(comps, 0), "status"), "partial_outage");
    assert_string_equal(sget(json_array_get(comps, 0), "name"), "MQTT device service");
    assert_string_equal(sget(json_array_get(comps, 1), "status"), "partial_outage");
    assert_string_equal(sget(json_array_get(comps, 3), "status"), "operational");
    assert_string_equal(sget(json_array_get(comps, 3), "updated_at"), "2023-11-14T21:13:20.123Z");
    /* Unresolved incidents only. */
    json_t *incs = json_object_get(j, "incidents");
    assert_int_equal(json_array_size(incs), 1);
    assert_string_equal(sget(json_array_get(incs, 0), "id"), "7");
    json_t *sm = json_object_get(j, "scheduled_maintenances");
    assert_true(json_is_array(sm));
    assert_int_equal(json_array_size(sm), 0);
    json_decref(j);
    cy_buf_fini(&b);
    free(f);
}

static void test_json_incidents(void **state)
{
    (void)state;
    model_fixture *f = malloc(sizeof(*f));
    assert_non_null(f);
    build_model(f);
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_status_render_incidents(&f->m, &b), 0);
    json_t *j = parse(&b);
    check_page(json_object_get(j, "page"));
    json_t *incs = json_object_get(j, "incidents");
    assert_int_equal(json_array_size(incs), 2);
    json_t *i7 = json_array_get(incs, 0);
    assert_string_equal(sget(i7, "id"), "7");
    assert_string_equal(sget(i7, "name"), "Shard 2 hung <script>alert(1)</script>");
    assert_string_equal(sget(i7, "status"), "identified");
    assert_string_equal(sget(i7, "impact"), "major");
    assert_string_equal(sget(i7, "created_at"), "2023-11-14T22:09:20.123Z");
    assert_string_equal(sget(i7, "updated_at"), "2023-11-14T22:12:20.123Z");
    assert_string_equal(sget(i7, "started_at"), "2023-11-14T22:08:20.123Z");
    assert_true(json_is_null(json_object_get(i7, "monitoring_at")));
    assert_true(json_is_null(json_object_get(i7, "resolved_at")));
    assert_string_equal(sget(i7, "shortlink"), "https://status.example/status#incident-7");
    assert_string_equal(sget(i7, "page_id"), "node-1");
    json_t *ups = json_object_get(i7, "incident_updates");
    assert_int_equal(json_array_size(ups), 2);
    json_t *u = json_array_get(ups, 0);
    assert_string_equal(sget(u, "id"), "12");
    assert_string_equal(sget(u, "status"), "identified");
    assert_string_equal(sget(u, "body"), "We found it & are \"fixing\" it");
    assert_string_equal(sget(u, "incident_id"), "7");
    assert_string_equal(sget(u, "created_at"), "2023-11-14T22:12:20.123Z");
    assert_string_equal(sget(u, "updated_at"), "2023-11-14T22:12:20.123Z");
    assert_string_equal(sget(u, "display_at"), "2023-11-14T22:12:20.123Z");
    assert_true(json_is_null(json_object_get(u, "affected_components")));
    assert_string_equal(sget(json_array_get(ups, 1), "status"), "investigating");
    json_t *comps = json_object_get(i7, "components");
    assert_int_equal(json_array_size(comps), 1);
    assert_string_equal(sget(json_array_get(comps, 0), "id"), "shard-2");
    assert_string_equal(sget(json_array_get(comps, 0), "status"), "major_outage");

    json_t *i2 = json_array_get(incs, 1);
    assert_string_equal(sget(i2, "status"), "resolved");
    assert_string_equal(sget(i2, "impact"), "minor");
    assert_string_equal(sget(i2, "resolved_at"), "2023-11-14T20:13:20.123Z");
    assert_string_equal(sget(i2, "monitoring_at"), "2023-11-14T19:43:20.123Z");
    assert_int_equal(json_array_size(json_object_get(i2, "components")), 0);
    json_decref(j);
    cy_buf_fini(&b);
    free(f);
}

static void test_json_timeline(void **state)
{
    (void)state;
    model_fixture *f = malloc(sizeof(*f));
    assert_non_null(f);
    build_model(f);
    f->ev[2].details = (char *)"[1,2]"; /* not an object: shown as null */
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_status_render_timeline(&f->m, &b), 0);
    json_t *j = parse(&b);
    check_page(json_object_get(j, "page"));
    json_t *ev = json_object_get(j, "events");
    assert_int_equal(json_array_size(ev), 3);
    json_t *e = json_array_get(ev, 1);
    assert_string_equal(sget(e, "id"), "29");
    assert_string_equal(sget(e, "time"), "2023-11-14T22:08:20.123Z");
    assert_string_equal(sget(e, "kind"), "alert_firing");
    assert_string_equal(sget(e, "component"), "shard-2");
    assert_string_equal(sget(e, "text"), "ShardHung firing (critical): <script>x</script>");
    json_t *d = json_object_get(e, "details");
    assert_string_equal(sget(d, "severity"), "critical");
    assert_string_equal(sget(d, "fingerprint"), "fp1");
    e = json_array_get(ev, 2);
    assert_string_equal(sget(e, "kind"), "deploy");
    assert_true(json_is_null(json_object_get(e, "component")));
    assert_true(json_is_null(json_object_get(e, "details")));
    json_decref(j);
    cy_buf_fini(&b);
    free(f);
}

/* Text that is not UTF-8 still makes valid JSON, with U+FFFD. */
static void test_json_not_utf8(void **state)
{
    (void)state;
    model_fixture *f = malloc(sizeof(*f));
    assert_non_null(f);
    build_model(f);
    char bad_name[] = "bad \xff name \xe2\x82";
    f->inc[0].name = bad_name;
    f->m.page.name = "x\x80y";
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_status_render_incidents(&f->m, &b), 0);
    json_t *j = parse(&b);
    assert_string_equal(sget(json_array_get(json_object_get(j, "incidents"), 0), "name"),
                        "bad \xef\xbf\xbd name \xef\xbf\xbd\xef\xbf\xbd");
    assert_string_equal(sget(json_object_get(j, "page"), "name"), "x\xef\xbf\xbdy");
    json_decref(j);
    cy_buf_fini(&b);
    free(f);
}

static void test_time_formats(void **state)
{
    (void)state;
    char s[CY_STATUS_TIME_LEN];
    cy_status_rfc3339(T0, s);
    assert_string_equal(s, "2023-11-14T22:13:20.123Z");
    cy_status_rfc3339(5, s);
    assert_string_equal(s, "1970-01-01T00:00:00.005Z");
    cy_status_rfc3339(-1, s);
    assert_string_equal(s, "1970-01-01T00:00:00.000Z");
    cy_status_duration(45 * 1000 + 999, s);
    assert_string_equal(s, "45 s");
    cy_status_duration(3 * MIN + 12000, s);
    assert_string_equal(s, "3 min 12 s");
    cy_status_duration(2 * HOUR + 5 * MIN, s);
    assert_string_equal(s, "2 h 5 min");
    cy_status_duration(76 * HOUR, s);
    assert_string_equal(s, "3 d 4 h");
}

/* ---- statusdb ---- */

typedef struct db_fixture {
    char dir[64];
    char path[128];
    cy_statusdb *db;
} db_fixture;

static int db_setup(void **state)
{
    db_fixture *f = calloc(1, sizeof(*f));
    if (!f) return -1;
    strcpy(f->dir, "/tmp/cyan-statusdb-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/" CY_STATUSDB_FILE, f->dir);
    if (cy_statusdb_open(f->path, NULL, T0, &f->db)) {
        rmdir(f->dir);
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int db_teardown(void **state)
{
    db_fixture *f = *state;
    cy_statusdb_close(f->db);
    cyt_dir_remove(f->dir);
    free(f);
    cy_alloc_fail_after(-1);
    return 0;
}

static void reopen(db_fixture *f, const cy_statusdb_opts *o, int64_t now)
{
    cy_statusdb_close(f->db);
    f->db = NULL;
    assert_int_equal(cy_statusdb_open(f->path, o, now, &f->db), 0);
}

static size_t timeline_count(cy_statusdb *db)
{
    cy_timeline_list l;
    assert_int_equal(cy_statusdb_timeline_list(db, 0, CY_STATUSDB_LIST_MAX, &l), 0);
    size_t n = l.n;
    cy_timeline_list_fini(&l);
    return n;
}

static size_t timeline_count_kind(cy_statusdb *db, int kind)
{
    cy_timeline_list l;
    assert_int_equal(cy_statusdb_timeline_list(db, 0, CY_STATUSDB_LIST_MAX, &l), 0);
    size_t n = 0;
    for (size_t i = 0; i < l.n; i++)
        n += l.v[i].kind == kind;
    cy_timeline_list_fini(&l);
    return n;
}

static cy_status_alert hung(const char *fp, const char *name, const char *sev, const char *shard,
                            int64_t since)
{
    return (cy_status_alert){.fingerprint = fp,
                             .alertname = name,
                             .severity = sev,
                             .component = "mqtt",
                             .shard = shard,
                             .summary = "Shard 2 has stopped making progress",
                             .evidence = "cyan_shard_last_progress_timestamp_seconds{shard=\"2\"}"
                                         " unchanged since 22:08:20Z",
                             .since_ms = since};
}

static void test_db_alert_flow(void **state)
{
    db_fixture *f = *state;
    int64_t id = -1, id2 = -1;
    int act = -1;
    cy_status_alert a1 = hung("ShardHung{shard=\"2\"}", "ShardHung", "critical", "2", T0);
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a1, T0 + 1000, &id, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_OPENED);
    assert_true(id > 0);
    cy_incident inc;
    assert_int_equal(cy_statusdb_incident_get(f->db, id, &inc), 0);
    assert_string_equal(inc.name, "Shard 2 has stopped making progress");
    assert_int_equal(inc.status, CY_INCIDENT_INVESTIGATING);
    assert_int_equal(inc.impact, CY_IMPACT_MAJOR);
    assert_int_equal(inc.ncomponents, 1);
    assert_string_equal(inc.components[0], "shard-2");
    assert_int_equal(inc.started_ms, T0);
    assert_int_equal(inc.created_ms, T0 + 1000);
    assert_int_equal(inc.resolved_ms, 0);
    assert_int_equal(inc.nupdates, 1);
    assert_int_equal(inc.updates[0].status, CY_INCIDENT_INVESTIGATING);
    assert_non_null(strstr(inc.updates[0].body, "Evidence: cyan_shard_last_progress_timestamp"));
    assert_non_null(strstr(inc.updates[0].body, "ShardHung (critical)"));
    assert_int_equal(inc.nalerts, 1);
    assert_string_equal(inc.alerts[0].fingerprint, "ShardHung{shard=\"2\"}");
    assert_int_equal(inc.alerts[0].cleared_ms, 0);
    cy_incident_fini(&inc);
    size_t events = timeline_count(f->db);
    assert_int_equal(events, 2); /* alert_firing, incident_opened */

    /* The same alert again (a restarted monitor): nothing new. */
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a1, T0 + 2000, &id2, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_NOTHING);
    assert_int_equal(id2, id);
    assert_int_equal(timeline_count(f->db), events);
    cy_incident_list l;
    assert_int_equal(cy_statusdb_incident_list(f->db, false, 10, &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].nupdates, 1);
    cy_incident_list_fini(&l);

    /* Another alert of shard 2 joins it; one of shard 3 opens its own. */
    cy_status_alert a2 =
        hung("CanaryFailing{shard=\"2\"}", "CanaryFailing", "warning", "2", T0 + 3000);
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a2, T0 + 3000, &id2, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_JOINED);
    assert_int_equal(id2, id);
    cy_status_alert a3 = hung("ShardHung{shard=\"3\"}", "ShardHung", "warning", "3", T0 + 3500);
    int64_t id3;
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a3, T0 + 3500, &id3, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_OPENED);
    assert_true(id3 != id);
    assert_int_equal(cy_statusdb_incident_get(f->db, id3, &inc), 0);
    assert_int_equal(inc.impact, CY_IMPACT_MINOR);
    cy_incident_fini(&inc);

    /* An operator says what it is. */
    int64_t uid = 0;
    assert_int_equal(cy_statusdb_incident_update(f->db, id, CY_INCIDENT_IDENTIFIED,
                                                 "A deadlock in the router.", T0 + 4000, &uid),
                     0);
    assert_true(uid > 0);

    /* The first alert clears: the incident stays, one alert still fires. */
    assert_int_equal(cy_statusdb_alert_resolved(f->db, &a1, T0 + 181000, &id2, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_CLEARED);
    assert_int_equal(id2, id);
    assert_int_equal(cy_statusdb_incident_get(f->db, id, &inc), 0);
    assert_int_equal(inc.status, CY_INCIDENT_IDENTIFIED);
    assert_int_equal(inc.impact, CY_IMPACT_MAJOR); /* the worst of its alerts */
    assert_int_equal(inc.resolved_ms, 0);
    assert_int_equal(inc.nupdates, 4);
    assert_int_equal(inc.updates[0].status, CY_INCIDENT_IDENTIFIED);
    assert_non_null(strstr(inc.updates[0].body, "ShardHung cleared at"));
    assert_non_null(strstr(inc.updates[0].body, "after 3 min 1 s; 1 alert still firing."));
    assert_string_equal(inc.updates[1].body, "A deadlock in the router.");
    assert_non_null(strstr(inc.updates[2].body, "Also firing since"));
    assert_int_equal(inc.updates[3].status, CY_INCIDENT_INVESTIGATING);
    assert_true(inc.updates[0].id > inc.updates[1].id);
    assert_int_equal(inc.nalerts, 2);
    assert_int_equal(inc.alerts[0].cleared_ms, T0 + 181000);
    assert_int_equal(inc.alerts[1].cleared_ms, 0);
    cy_incident_fini(&inc);

    /* The last one clears: resolved automatically, saying how long. */
    assert_int_equal(cy_statusdb_alert_resolved(f->db, &a2, T0 + 301000, &id2, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_RESOLVED);
    assert_int_equal(id2, id);
    assert_int_equal(cy_statusdb_incident_get(f->db, id, &inc), 0);
    assert_int_equal(inc.status, CY_INCIDENT_RESOLVED);
    assert_int_equal(inc.resolved_ms, T0 + 301000);
    assert_int_equal(inc.updates[0].status, CY_INCIDENT_RESOLVED);
    assert_non_null(strstr(inc.updates[0].body, "Resolved automatically"));
    assert_non_null(strstr(inc.updates[0].body, "It lasted 5 min 1 s"));
    cy_incident_fini(&inc);
    /* Resolving again: nothing. */
    assert_int_equal(cy_statusdb_alert_resolved(f->db, &a2, T0 + 302000, &id2, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_NOTHING);
    assert_int_equal(id2, 0);

    /* It fires again after: a new incident. */
    int64_t id4;
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a1, T0 + 400000, &id4, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_OPENED);
    assert_true(id4 > id3);

    /* Info alerts: the timeline only. */
    cy_status_alert a5 = hung("Info{}", "Info", "info", "", T0);
    a5.component = "monitor";
    size_t before = timeline_count(f->db);
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a5, T0 + 500000, &id2, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_NOTHING);
    assert_int_equal(id2, 0);
    assert_int_equal(timeline_count(f->db), before + 1);
    assert_int_equal(cy_statusdb_alert_resolved(f->db, &a5, T0 + 501000, &id2, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_NOTHING);
    assert_int_equal(timeline_count(f->db), before + 2);

    /* Listing: unresolved first (newest first), then resolved. */
    assert_int_equal(cy_statusdb_incident_list(f->db, false, 10, &l), 0);
    assert_int_equal(l.n, 3);
    assert_int_equal(l.v[0].id, id4);
    assert_int_equal(l.v[1].id, id3);
    assert_int_equal(l.v[2].id, id);
    assert_int_equal(l.v[2].nupdates, 5);
    cy_incident_list_fini(&l);
    assert_int_equal(cy_statusdb_incident_list(f->db, true, 10, &l), 0);
    assert_int_equal(l.n, 2);
    cy_incident_list_fini(&l);
    assert_int_equal(cy_statusdb_incident_list(f->db, false, 1, &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, id4);
    cy_incident_list_fini(&l);

    /* Every change is on the timeline. */
    assert_int_equal(timeline_count_kind(f->db, CY_TL_INCIDENT_OPENED), 3);
    assert_int_equal(timeline_count_kind(f->db, CY_TL_INCIDENT_RESOLVED), 1);
    assert_int_equal(timeline_count_kind(f->db, CY_TL_ALERT_FIRING), 5);
    assert_int_equal(timeline_count_kind(f->db, CY_TL_ALERT_RESOLVED), 3);
    assert_int_equal(timeline_count_kind(f->db, CY_TL_INCIDENT_UPDATE), 3);
}

static void test_db_operator(void **state)
{
    db_fixture *f = *state;
    int64_t id = 0, uid = 0;
    assert_int_equal(cy_statusdb_incident_create(f->db, "Webhooks delayed", "webhooks",
                                                 CY_INCIDENT_INVESTIGATING, CY_IMPACT_MINOR,
                                                 "Deliveries to some endpoints are late.", T0, &id),
                     0);
    assert_true(id > 0);
    assert_int_equal(cy_statusdb_incident_update(f->db, id, CY_INCIDENT_MONITORING, "A fix is out.",
                                                 T0 + 1000, &uid),
                     0);
    assert_int_equal(cy_statusdb_incident_update(f->db, id, CY_INCIDENT_RESOLVED, "All caught up.",
                                                 T0 + 2000, &uid),
                     0);
    cy_incident inc;
    assert_int_equal(cy_statusdb_incident_get(f->db, id, &inc), 0);
    assert_string_equal(inc.name, "Webhooks delayed");
    assert_int_equal(inc.status, CY_INCIDENT_RESOLVED);
    assert_int_equal(inc.monitoring_ms, T0 + 1000);
    assert_int_equal(inc.resolved_ms, T0 + 2000);
    assert_int_equal(inc.started_ms, T0);
    assert_int_equal(inc.updated_ms, T0 + 2000);
    assert_int_equal(inc.nupdates, 3);
    assert_int_equal(inc.updates[0].id, uid);
    assert_string_equal(inc.components[0], "webhooks");
    assert_int_equal(inc.nalerts, 0);
    cy_incident_fini(&inc);
    /* A note on a resolved incident keeps it resolved (and its time). */
    assert_int_equal(cy_statusdb_incident_update(f->db, id, CY_INCIDENT_RESOLVED,
                                                 "Postmortem: a full disk.", T0 + 3000, NULL),
                     0);
    assert_int_equal(cy_statusdb_incident_get(f->db, id, &inc), 0);
    assert_int_equal(inc.resolved_ms, T0 + 2000);
    cy_incident_fini(&inc);
    /* Another status reopens it. */
    assert_int_equal(cy_statusdb_incident_update(f->db, id, CY_INCIDENT_IDENTIFIED, "It came back.",
                                                 T0 + 4000, NULL),
                     0);
    assert_int_equal(cy_statusdb_incident_get(f->db, id, &inc), 0);
    assert_int_equal(inc.status, CY_INCIDENT_IDENTIFIED);
    assert_int_equal(inc.resolved_ms, 0);
    cy_incident_fini(&inc);
    assert_int_equal(timeline_count_kind(f->db, CY_TL_INCIDENT_RESOLVED), 1);

    /* An alert of the component does not join an operator's incident. */
    cy_status_alert a = hung("WebhooksFailing{}", "WebhooksFailing", "critical", "", T0);
    a.component = "webhooks";
    int64_t aid;
    int act;
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a, T0 + 5000, &aid, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_OPENED);
    assert_true(aid != id);

    /* Unknown incidents; created resolved; no component. */
    assert_int_equal(cy_statusdb_incident_update(f->db, 999, CY_INCIDENT_RESOLVED, "x", T0, NULL),
                     CY_ENOENT);
    assert_int_equal(cy_statusdb_incident_update(f->db, 0, CY_INCIDENT_RESOLVED, "x", T0, NULL),
                     CY_ENOENT);
    assert_int_equal(cy_statusdb_incident_get(f->db, 999, &inc), CY_ENOENT);
    int64_t rid;
    assert_int_equal(cy_statusdb_incident_create(f->db, "Earlier outage", NULL,
                                                 CY_INCIDENT_RESOLVED, CY_IMPACT_NONE,
                                                 "Recorded after the fact.", T0 + 6000, &rid),
                     0);
    assert_int_equal(cy_statusdb_incident_get(f->db, rid, &inc), 0);
    assert_int_equal(inc.resolved_ms, T0 + 6000);
    assert_int_equal(inc.ncomponents, 0);
    cy_incident_fini(&inc);
}

static void test_db_invalid(void **state)
{
    db_fixture *f = *state;
    size_t events = timeline_count(f->db);
    int64_t id = 42;
    char longname[CY_STATUS_NAME_MAX + 2];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    const char *ok = "ok";
    struct {
        const char *name, *comp, *body;
        int status, impact;
    } bad[] = {
        {"", NULL, ok, 0, 0},         {NULL, NULL, ok, 0, 0},
        {"a\nb", NULL, ok, 0, 0},     {longname, NULL, ok, 0, 0},
        {"bad \xff", NULL, ok, 0, 0}, {"n", "Shard_2", ok, 0, 0},
        {"n", "shard-2 ", ok, 0, 0},  {"n", NULL, "", 0, 0},
        {"n", NULL, NULL, 0, 0},      {"n", NULL, ok, 4, 0},
        {"n", NULL, ok, -1, 0},       {"n", NULL, ok, 0, 4},
        {"n", NULL, "a\x01", 0, 0},   {"n", NULL, "\xed\xa0\x80", 0, 0},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        id = 42;
        assert_int_equal(cy_statusdb_incident_create(f->db, bad[i].name, bad[i].comp, bad[i].status,
                                                     bad[i].impact, bad[i].body, T0, &id),
                         CY_EINVAL);
        assert_int_equal(id, 0);
    }
    /* The longest name that fits, and a body with newlines, are fine. */
    longname[CY_STATUS_NAME_MAX] = '\0';
    assert_int_equal(
        cy_statusdb_incident_create(f->db, longname, "shard-0", 0, 0, "a\nb\tc", T0, &id), 0);
    events += 1;
    assert_int_equal(cy_statusdb_incident_update(f->db, id, 7, "x", T0, NULL), CY_EINVAL);
    assert_int_equal(cy_statusdb_incident_update(f->db, id, 0, "", T0, NULL), CY_EINVAL);

    /* Timeline input. */
    assert_int_equal(cy_statusdb_timeline_append(f->db, CY_TL_KINDS, NULL, "t", NULL, T0, NULL),
                     CY_EINVAL);
    assert_int_equal(cy_statusdb_timeline_append(f->db, -1, NULL, "t", NULL, T0, NULL), CY_EINVAL);
    assert_int_equal(cy_statusdb_timeline_append(f->db, CY_TL_NOTE, NULL, "", NULL, T0, NULL),
                     CY_EINVAL);
    assert_int_equal(cy_statusdb_timeline_append(f->db, CY_TL_NOTE, "X", "t", NULL, T0, NULL),
                     CY_EINVAL);
    assert_int_equal(cy_statusdb_timeline_append(f->db, CY_TL_NOTE, NULL, "t", "[1]", T0, NULL),
                     CY_EINVAL);
    assert_int_equal(cy_statusdb_timeline_append(f->db, CY_TL_NOTE, NULL, "t", "{", T0, NULL),
                     CY_EINVAL);
    assert_int_equal(cy_statusdb_timeline_append(f->db, CY_TL_NOTE, NULL, "t", NULL, -5, NULL),
                     CY_EINVAL);
    cy_timeline_list tl;
    assert_int_equal(cy_statusdb_timeline_list(f->db, 0, 0, &tl), CY_EINVAL);
    assert_int_equal(cy_statusdb_timeline_list(f->db, 0, CY_STATUSDB_LIST_MAX + 1, &tl), CY_EINVAL);
    cy_incident_list il;
    assert_int_equal(cy_statusdb_incident_list(f->db, false, 0, &il), CY_EINVAL);

    /* Alerts. */
    cy_status_alert a = hung("fp", "A", "critical", "2", T0);
    cy_status_alert b = a;
    b.severity = "fatal";
    assert_int_equal(cy_statusdb_alert_fired(f->db, &b, T0, NULL, NULL), CY_EINVAL);
    b = a;
    b.fingerprint = "";
    assert_int_equal(cy_statusdb_alert_fired(f->db, &b, T0, NULL, NULL), CY_EINVAL);
    b = a;
    b.alertname = NULL;
    assert_int_equal(cy_statusdb_alert_fired(f->db, &b, T0, NULL, NULL), CY_EINVAL);
    b = a;
    b.shard = "two";
    assert_int_equal(cy_statusdb_alert_fired(f->db, &b, T0, NULL, NULL), CY_EINVAL);
    b.shard = "02";
    assert_int_equal(cy_statusdb_alert_fired(f->db, &b, T0, NULL, NULL), CY_EINVAL);
    b = a;
    b.shard = "";
    b.component = "Not An Id";
    assert_int_equal(cy_statusdb_alert_fired(f->db, &b, T0, NULL, NULL), CY_EINVAL);
    b = a;
    b.summary = "two\nlines";
    assert_int_equal(cy_statusdb_alert_fired(f->db, &b, T0, NULL, NULL), CY_EINVAL);
    b = a;
    b.evidence = "\xff";
    assert_int_equal(cy_statusdb_alert_fired(f->db, &b, T0, NULL, NULL), CY_EINVAL);
    assert_int_equal(cy_statusdb_alert_resolved(f->db, &b, T0, NULL, NULL), 0); /* not firing */
    b.fingerprint = NULL;
    assert_int_equal(cy_statusdb_alert_resolved(f->db, &b, T0, NULL, NULL), CY_EINVAL);

    /* Starts. */
    assert_int_equal(cy_statusdb_record_start(f->db, NULL, "1.0 beta", "abc", T0, NULL), CY_EINVAL);
    assert_int_equal(cy_statusdb_record_start(f->db, NULL, "1.0", "", T0, NULL), CY_EINVAL);
    assert_int_equal(cy_statusdb_record_start(f->db, "Shard", "1.0", "abc", T0, NULL), CY_EINVAL);

    /* Nothing of it was written. */
    assert_int_equal(timeline_count(f->db), events);
    assert_int_equal(cy_statusdb_incident_list(f->db, false, 10, &il), 0);
    assert_int_equal(il.n, 1);
    cy_incident_list_fini(&il);

    /* Words. */
    assert_int_equal(cy_incident_status_parse("monitoring"), CY_INCIDENT_MONITORING);
    assert_int_equal(cy_incident_status_parse("Monitoring"), CY_EINVAL);
    assert_int_equal(cy_incident_status_parse(NULL), CY_EINVAL);
    assert_int_equal(cy_incident_impact_parse("critical"), CY_IMPACT_CRITICAL);
    assert_int_equal(cy_timeline_kind_parse("alert_resolved"), CY_TL_ALERT_RESOLVED);
    assert_string_equal(cy_timeline_kind_name(CY_TL_DEPLOY), "deploy");
    assert_string_equal(cy_incident_status_name(9), "?");
    assert_true(cy_status_id_valid("shard-63"));
    assert_false(cy_status_id_valid("a-very-long-component-id-over-31"));
}

static void test_db_timeline(void **state)
{
    db_fixture *f = *state;
    int64_t times[] = {T0 + 5000, T0 + 1000, T0 + 3000, T0 + 3000, T0 + 2000};
    int64_t ids[5];
    for (int i = 0; i < 5; i++) {
        char text[32];
        snprintf(text, sizeof(text), "event %d", i);
        assert_int_equal(cy_statusdb_timeline_append(f->db, CY_TL_NOTE, i % 2 ? "shard-1" : NULL,
                                                     text, i == 0 ? "{\"a\":1}" : NULL, times[i],
                                                     &ids[i]),
                         0);
        if (i) assert_true(ids[i] > ids[i - 1]);
    }
    cy_timeline_list l;
    assert_int_equal(cy_statusdb_timeline_list(f->db, 0, 100, &l), 0);
    assert_int_equal(l.n, 5);
    /* Newest first by time, then by id. */
    const char *order[] = {"event 0", "event 3", "event 2", "event 4", "event 1"};
    for (int i = 0; i < 5; i++)
        assert_string_equal(l.v[i].text, order[i]);
    assert_string_equal(l.v[0].details, "{\"a\":1}");
    assert_null(l.v[1].details);
    assert_string_equal(l.v[1].component, "shard-1");
    assert_string_equal(l.v[0].component, "");
    assert_int_equal(l.v[0].kind, CY_TL_NOTE);
    assert_int_equal(l.v[0].time_ms, T0 + 5000);
    cy_timeline_list_fini(&l);
    assert_int_equal(cy_statusdb_timeline_list(f->db, T0 + 3000, 100, &l), 0);
    assert_int_equal(l.n, 3);
    cy_timeline_list_fini(&l);
    assert_int_equal(cy_statusdb_timeline_list(f->db, 0, 2, &l), 0);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.v[1].text, "event 3");
    cy_timeline_list_fini(&l);

    /* Starts and deploys. */
    bool deploy = false;
    assert_int_equal(cy_statusdb_record_start(f->db, NULL, "1.0.0", "aaa", T0 + 10000, &deploy), 0);
    assert_true(deploy); /* the first one recorded */
    assert_int_equal(cy_statusdb_record_start(f->db, NULL, "1.0.0", "aaa", T0 + 10000, &deploy), 0);
    assert_false(deploy); /* the same start: nothing */
    assert_int_equal(cy_statusdb_record_start(f->db, NULL, "1.0.0", "aaa", T0 + 20000, &deploy), 0);
    assert_false(deploy); /* a restart of the same build */
    assert_int_equal(cy_statusdb_record_start(f->db, NULL, "1.1.0", "bbb", T0 + 30000, &deploy), 0);
    assert_true(deploy);
    assert_int_equal(
        cy_statusdb_record_start(f->db, "monitor", "1.1.0", "bbb", T0 + 31000, &deploy), 0);
    assert_true(deploy); /* first start of that component */
    assert_int_equal(timeline_count_kind(f->db, CY_TL_DEPLOY), 3);
    assert_int_equal(timeline_count_kind(f->db, CY_TL_START), 4);
    assert_int_equal(cy_statusdb_timeline_list(f->db, T0 + 30000, 10, &l), 0);
    assert_int_equal(l.n, 4);
    assert_int_equal(l.v[2].kind, CY_TL_START);
    assert_int_equal(l.v[3].kind, CY_TL_DEPLOY); /* same time, recorded before the start */
    assert_string_equal(l.v[3].text,
                        "deploy: node now runs cyan 1.1.0 (commit bbb), was 1.0.0 (aaa)");
    json_t *d = json_loads(l.v[3].details, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(d, "version")), "1.1.0");
    json_decref(d);
    assert_string_equal(l.v[0].component, "monitor");
    cy_timeline_list_fini(&l);
}

static void test_db_trim(void **state)
{
    db_fixture *f = *state;
    cy_statusdb_opts o = {.timeline_keep = 10, .trim_every = 5, .timeline_keep_ms = HOUR};
    reopen(f, &o, T0);
    for (int i = 0; i < 30; i++)
        assert_int_equal(
            cy_statusdb_timeline_append(f->db, CY_TL_NOTE, NULL, "x", NULL, T0 + i * 1000, NULL),
            0);
    cy_timeline_list l;
    assert_int_equal(cy_statusdb_timeline_list(f->db, 0, 100, &l), 0);
    /* Trimmed at the 30th append: the newest 10 remain. */
    assert_int_equal(l.n, 10);
    assert_int_equal(l.v[0].time_ms, T0 + 29000);
    assert_int_equal(l.v[9].time_ms, T0 + 20000);
    cy_timeline_list_fini(&l);
    /* Between trims it grows, at most trim_every - 1 over. */
    for (int i = 30; i < 34; i++)
        assert_int_equal(
            cy_statusdb_timeline_append(f->db, CY_TL_NOTE, NULL, "x", NULL, T0 + i * 1000, NULL),
            0);
    assert_int_equal(timeline_count(f->db), 14);

    assert_int_equal(
        cy_statusdb_timeline_append(f->db, CY_TL_NOTE, NULL, "x", NULL, T0 + 34000, NULL),
        0); /* the 5th since the last trim: trims by count */
    assert_int_equal(timeline_count(f->db), 10);

    /* By age: at an open two hours later, everything older than an hour goes. */
    assert_int_equal(
        cy_statusdb_timeline_append(f->db, CY_TL_NOTE, NULL, "late", NULL, T0 + 90 * MIN, NULL), 0);
    assert_int_equal(timeline_count(f->db), 11);
    reopen(f, &o, T0 + 2 * HOUR);
    assert_int_equal(cy_statusdb_timeline_list(f->db, 0, 100, &l), 0);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.v[0].text, "late");
    cy_timeline_list_fini(&l);

    /* Resolved incidents older than incident_keep_ms go too; open ones stay. */
    cy_statusdb_opts o2 = {.incident_keep_ms = HOUR};
    reopen(f, &o2, T0);
    int64_t old, open;
    assert_int_equal(
        cy_statusdb_incident_create(f->db, "old", NULL, CY_INCIDENT_RESOLVED, 0, "b", T0, &old), 0);
    assert_int_equal(cy_statusdb_incident_create(f->db, "open", NULL, CY_INCIDENT_INVESTIGATING, 0,
                                                 "b", T0, &open),
                     0);
    reopen(f, &o2, T0 + 2 * HOUR);
    cy_incident inc;
    assert_int_equal(cy_statusdb_incident_get(f->db, old, &inc), CY_ENOENT);
    assert_int_equal(cy_statusdb_incident_get(f->db, open, &inc), 0);
    cy_incident_fini(&inc);
    /* Ids are not reused. */
    int64_t next;
    assert_int_equal(cy_statusdb_incident_create(f->db, "next", NULL, 0, 0, "b", T0, &next), 0);
    assert_true(next > open);
}

static void test_db_durable(void **state)
{
    db_fixture *f = *state;
    cy_status_alert a = hung("fp-durable", "ShardHung", "critical", "1", T0);
    int64_t id, id2;
    int act;
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a, T0, &id, &act), 0);
    assert_int_equal(
        cy_statusdb_incident_update(f->db, id, CY_INCIDENT_IDENTIFIED, "Found it.", T0 + 1, NULL),
        0);
    assert_int_equal(cy_statusdb_timeline_append(f->db, CY_TL_RESTART, "shard-1",
                                                 "shard 1 restarted: hung", NULL, T0 + 2, NULL),
                     0);
    size_t events = timeline_count(f->db);
    reopen(f, NULL, T0 + 3);
    cy_incident inc;
    assert_int_equal(cy_statusdb_incident_get(f->db, id, &inc), 0);
    assert_int_equal(inc.status, CY_INCIDENT_IDENTIFIED);
    assert_int_equal(inc.nupdates, 2);
    assert_string_equal(inc.updates[0].body, "Found it.");
    cy_incident_fini(&inc);
    assert_int_equal(timeline_count(f->db), events);
    /* The firing set survived: the restarted monitor's "fired" is a no-op... */
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a, T0 + 4, &id2, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_NOTHING);
    assert_int_equal(id2, id);
    /* ...and its resolution resolves the incident it opened before. */
    assert_int_equal(cy_statusdb_alert_resolved(f->db, &a, T0 + 5, &id2, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_RESOLVED);
    assert_int_equal(id2, id);
}

static void test_db_reconcile(void **state)
{
    db_fixture *f = *state;
    cy_status_alert a[3] = {hung("fp-a", "A", "critical", "0", T0),
                            hung("fp-b", "B", "warning", "1", T0),
                            hung("fp-c", "C", "info", "2", T0)};
    for (int i = 0; i < 3; i++)
        assert_int_equal(cy_statusdb_alert_fired(f->db, &a[i], T0, NULL, NULL), 0);
    size_t n = 99;
    assert_int_equal(cy_statusdb_alert_reconcile(f->db, &a[1], 1, T0 + 1000, &n), 0);
    assert_int_equal(n, 2);
    int act;
    assert_int_equal(cy_statusdb_alert_resolved(f->db, &a[1], T0 + 2000, NULL, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_RESOLVED); /* still firing until now */
    assert_int_equal(cy_statusdb_alert_resolved(f->db, &a[0], T0 + 2000, NULL, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_NOTHING); /* resolved by the reconcile */
    cy_incident_list l;
    assert_int_equal(cy_statusdb_incident_list(f->db, true, 10, &l), 0);
    assert_int_equal(l.n, 0);
    cy_incident_list_fini(&l);
    assert_int_equal(cy_statusdb_alert_reconcile(f->db, NULL, 0, T0, &n), 0);
    assert_int_equal(n, 0);
}

/* A full file: CY_ENOSPC, nothing half-written, reads go on. */
static void test_db_full(void **state)
{
    db_fixture *f = *state;
    cy_statusdb_opts o = {.max_bytes = 192 << 10};
    reopen(f, &o, T0);
    int64_t id;
    assert_int_equal(cy_statusdb_incident_create(f->db, "before", "api", 0, 1, "b", T0, &id), 0);
    char text[CY_STATUS_TEXT_MAX + 1];
    memset(text, 'x', CY_STATUS_TEXT_MAX);
    text[CY_STATUS_TEXT_MAX] = '\0';
    int rc = 0, i;
    for (i = 0; i < 10000 && rc == 0; i++)
        rc = cy_statusdb_timeline_append(f->db, CY_TL_NOTE, NULL, text, NULL, T0 + i, NULL);
    assert_int_equal(rc, CY_ENOSPC);
    assert_true(i > 10);
    assert_true(strlen(cy_statusdb_errmsg(f->db)) > 0);
    size_t events = timeline_count(f->db);
    assert_int_equal(events, (size_t)i); /* i - 1 notes and the incident's event */
    /* An alert whose evidence needs a page more does not fit either, and
     * leaves nothing behind: no incident, not in the firing set. */
    static char evidence[4001];
    memset(evidence, 'e', 4000);
    cy_status_alert a = hung("fp-full", "A", "critical", "0", T0);
    a.evidence = evidence;
    int act = -1;
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a, T0, &id, &act), CY_ENOSPC);
    assert_int_equal(act, CY_ALERT_ACT_NOTHING);
    assert_int_equal(id, 0);
    cy_incident_list l;
    assert_int_equal(cy_statusdb_incident_list(f->db, false, 10, &l), 0);
    assert_int_equal(l.n, 1);
    cy_incident_list_fini(&l);
    assert_int_equal(timeline_count(f->db), events);
    /* Reads work; the incident from before is whole. */
    cy_incident inc;
    assert_int_equal(cy_statusdb_incident_get(f->db, 1, &inc), 0);
    assert_string_equal(inc.name, "before");
    cy_incident_fini(&inc);
    /* With room again (a larger cap), the alert opens its incident then. */
    cy_statusdb_opts big = {.max_bytes = 64 << 20};
    reopen(f, &big, T0);
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a, T0 + 1, &id, &act), 0);
    assert_int_equal(act, CY_ALERT_ACT_OPENED);
    assert_int_equal(id, 2);
}

/* Allocation failures of the reads: CY_ENOMEM and nothing leaked. */
static void test_db_alloc_failures(void **state)
{
    db_fixture *f = *state;
    cy_status_alert a = hung("fp-x", "A", "critical", "0", T0);
    cy_status_alert b = hung("fp-y", "B", "critical", "0", T0);
    int64_t id;
    assert_int_equal(cy_statusdb_alert_fired(f->db, &a, T0, &id, NULL), 0);
    assert_int_equal(cy_statusdb_alert_fired(f->db, &b, T0, NULL, NULL), 0);
    int failures = 0;
    for (long n = 0;; n++) {
        cy_incident_list l;
        cy_alloc_fail_after(n);
        int rc = cy_statusdb_incident_list(f->db, false, 10, &l);
        cy_alloc_fail_after(-1);
        if (rc == 0) {
            assert_int_equal(l.n, 1);
            assert_int_equal(l.v[0].nupdates, 2);
            cy_incident_list_fini(&l);
            break;
        }
        assert_int_equal(rc, CY_ENOMEM);
        assert_null(l.v);
        failures++;
    }
    assert_true(failures >= 4);
    failures = 0;
    for (long n = 0;; n++) {
        cy_timeline_list l;
        cy_alloc_fail_after(n);
        int rc = cy_statusdb_timeline_list(f->db, 0, 100, &l);
        cy_alloc_fail_after(-1);
        if (rc == 0) {
            cy_timeline_list_fini(&l);
            break;
        }
        assert_int_equal(rc, CY_ENOMEM);
        failures++;
    }
    assert_true(failures >= 3);
    /* A write that fails for memory is rolled back whole. */
    cy_status_alert c = hung("fp-z", "C", "critical", "3", T0);
    int rc;
    long n = 0;
    do {
        cy_alloc_fail_after(n++);
        rc = cy_statusdb_alert_fired(f->db, &c, T0, &id, NULL);
        cy_alloc_fail_after(-1);
        if (rc) {
            assert_int_equal(rc, CY_ENOMEM);
            cy_incident_list l;
            assert_int_equal(cy_statusdb_incident_list(f->db, false, 10, &l), 0);
            assert_int_equal(l.n, 1);
            cy_incident_list_fini(&l);
        }
    } while (rc);
    assert_true(n > 1);
    cy_incident_list l;
    assert_int_equal(cy_statusdb_incident_list(f->db, false, 10, &l), 0);
    assert_int_equal(l.n, 2);
    cy_incident_list_fini(&l);
}

static void test_db_open_errors(void **state)
{
    (void)state;
    cy_statusdb *db = (cy_statusdb *)1;
    assert_int_equal(cy_statusdb_open(NULL, NULL, T0, &db), CY_EINVAL);
    assert_int_equal(cy_statusdb_open("/nonexistent-dir/x/monitor.db", NULL, T0, &db), CY_ESTORE);
    assert_null(db);
    cy_statusdb_close(NULL);
    assert_string_equal(cy_statusdb_errmsg(NULL), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_derive_one_shard_down),
        cmocka_unit_test(test_derive_all_down),
        cmocka_unit_test(test_derive_warnings),
        cmocka_unit_test(test_derive_components),
        cmocka_unit_test(test_html_escape),
        cmocka_unit_test(test_html_page),
        cmocka_unit_test(test_render_alloc_failures),
        cmocka_unit_test(test_json_summary),
        cmocka_unit_test(test_json_incidents),
        cmocka_unit_test(test_json_timeline),
        cmocka_unit_test(test_json_not_utf8),
        cmocka_unit_test(test_time_formats),
        cmocka_unit_test_setup_teardown(test_db_alert_flow, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_operator, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_invalid, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_timeline, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_trim, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_durable, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_reconcile, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_full, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_alloc_failures, db_setup, db_teardown),
        cmocka_unit_test(test_db_open_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
