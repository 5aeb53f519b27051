/* alerts_json: the Alertmanager webhook body (version 4) for a group of
 * alerts; see cy_alerts_webhook_json in alerts.h. The shape is
 * Alertmanager's, so any receiver written for Alertmanager (PagerDuty
 * bridges, chat bots, our own tests) reads cyan's notifications:
 *
 *   {"receiver": "cyan", "status": "firing",
 *    "alerts": [{"status": "firing", "labels": {...}, "annotations": {...},
 *                "startsAt": "...Z", "endsAt": "0001-01-01T00:00:00Z",
 *                "generatorURL": "...", "fingerprint": "16 hex digits"}],
 *    "groupLabels": {...}, "commonLabels": {...}, "commonAnnotations": {...},
 *    "externalURL": "...", "version": "4", "groupKey": "{}:{alertname=\"X\"}",
 *    "truncatedAlerts": 0}
 */
#include "alerts/alerts.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZERO_TIME "0001-01-01T00:00:00Z"

static json_t *labels_object(const char *labels)
{
    json_t *o = json_object();
    if (!o) return NULL;
    size_t pos = 0;
    char name[64], value[CY_ALERT_LABELS_MAX];
    while (cy_alert_labels_next(labels, &pos, name, sizeof(name), value, sizeof(value))) {
        if (json_object_set_new(o, name, json_string(value))) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static json_t *annotations_object(const cy_alert *a)
{
    json_t *o = json_object();
    if (!o) return NULL;
    if (json_object_set_new(o, "summary", json_string(a->summary)) ||
        json_object_set_new(o, "evidence", json_string(a->evidence))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Keep in `common` only the keys that `other` has with the same value. */
static void intersect(json_t *common, json_t *other)
{
    const char *k;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(common, tmp, k, v)
    {
        json_t *w = json_object_get(other, k);
        if (!w || !json_equal(v, w)) json_object_del(common, k);
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int cy_alerts_webhook_json(const cy_alert *const *alerts, size_t n, const cy_alerts_webhook_opts *o,
                           char **out, size_t *len)
{
    *out = NULL;
    if (len) *len = 0;
    static const cy_alerts_webhook_opts none;
    if (!o) o = &none;
    size_t count = 0;
    bool firing = false;
    for (size_t i = 0; i < n; i++) {
        if (alerts[i]->state == CY_ALERT_FIRING || alerts[i]->state == CY_ALERT_RESOLVED) count++;
        if (alerts[i]->state == CY_ALERT_FIRING) firing = true;
    }
    if (count == 0) return CY_EINVAL;
    size_t keep = o->max_alerts && o->max_alerts < count ? o->max_alerts : count;

    int rc = CY_ENOMEM;
    json_t *root = json_object(), *arr = json_array(), *common = NULL, *common_ann = NULL,
           *group = json_object();
    const char **gk = NULL;
    char *text = NULL;
    if (!root || !arr || !group) goto done;

    size_t done_n = 0;
    for (size_t i = 0; i < n; i++) {
        const cy_alert *a = alerts[i];
        if (a->state != CY_ALERT_FIRING && a->state != CY_ALERT_RESOLVED) continue;
        json_t *lab = labels_object(a->labels), *ann = annotations_object(a);
        if (!lab || !ann) {
            json_decref(lab);
            json_decref(ann);
            goto done;
        }
        /* Common labels and annotations are over the whole group, as
         * Alertmanager computes them before truncating. */
        if (!common) {
            common = json_deep_copy(lab);
            common_ann = json_deep_copy(ann);
            if (!common || !common_ann) {
                json_decref(lab);
                json_decref(ann);
                goto done;
            }
        } else {
            intersect(common, lab);
            intersect(common_ann, ann);
        }
        if (done_n++ >= keep) {
            json_decref(lab);
            json_decref(ann);
            continue;
        }
        char starts[40], ends[40], fp[20];
        cy_alert_time(a->starts_at_ms ? a->starts_at_ms : a->active_ms, starts, sizeof(starts));
        if (a->state == CY_ALERT_RESOLVED)
            cy_alert_time(a->ends_at_ms, ends, sizeof(ends));
        else
            snprintf(ends, sizeof(ends), "%s", ZERO_TIME);
        snprintf(fp, sizeof(fp), "%016llx", (unsigned long long)a->fingerprint);
        json_t *x = json_object();
        if (!x || json_array_append_new(arr, x)) {
            json_decref(x);
            json_decref(lab);
            json_decref(ann);
            goto done;
        }
        if (json_object_set_new(x, "status",
                                json_string(a->state == CY_ALERT_FIRING ? "firing" : "resolved")) ||
            json_object_set_new(x, "labels", lab) || json_object_set_new(x, "annotations", ann) ||
            json_object_set_new(x, "startsAt", json_string(starts)) ||
            json_object_set_new(x, "endsAt", json_string(ends)) ||
            json_object_set_new(x, "generatorURL",
                                json_string(o->generator_url ? o->generator_url : "")) ||
            json_object_set_new(x, "fingerprint", json_string(fp)))
            goto done; /* set_new consumed lab and ann either way */
    }

    /* groupLabels: the group_by labels that every alert shares. */
    gk = cy_calloc(o->n_group_by ? o->n_group_by : 1, sizeof(*gk));
    if (!gk) goto done;
    size_t ng = 0;
    for (size_t i = 0; i < o->n_group_by; i++) {
        const char *name = o->group_by[i];
        json_t *v = json_object_get(common, name);
        if (!v || json_object_get(group, name)) continue;
        if (json_object_set(group, name, v)) goto done;
        gk[ng++] = name;
    }
    if (ng) qsort(gk, ng, sizeof(*gk), cmp_str);
    /* groupKey as Alertmanager prints it: "<route>:{a=\"x\", b=\"y\"}". */
    size_t cap = 8;
    for (size_t i = 0; i < ng; i++)
        cap += strlen(gk[i]) + 2 * strlen(json_string_value(json_object_get(group, gk[i]))) + 8;
    text = cy_malloc(cap);
    if (!text) goto done;
    size_t off = (size_t)snprintf(text, cap, "{}:{");
    for (size_t i = 0; i < ng; i++) {
        off += (size_t)snprintf(text + off, cap - off, "%s%s=\"", i ? ", " : "", gk[i]);
        for (const char *c = json_string_value(json_object_get(group, gk[i])); *c; c++) {
            if (*c == '"' || *c == '\\') text[off++] = '\\';
            text[off++] = *c;
        }
        text[off++] = '"';
        text[off] = '\0';
    }
    snprintf(text + off, cap - off, "}");

    if (json_object_set_new(root, "receiver", json_string(o->receiver ? o->receiver : "cyan")) ||
        json_object_set_new(root, "status", json_string(firing ? "firing" : "resolved")) ||
        json_object_set(root, "alerts", arr) || json_object_set(root, "groupLabels", group) ||
        json_object_set(root, "commonLabels", common) ||
        json_object_set(root, "commonAnnotations", common_ann) ||
        json_object_set_new(root, "externalURL",
                            json_string(o->external_url ? o->external_url : "")) ||
        json_object_set_new(root, "version", json_string("4")) ||
        json_object_set_new(root, "groupKey", json_string(text)) ||
        json_object_set_new(root, "truncatedAlerts", json_integer((json_int_t)(count - keep))))
        goto done;

    char *s = json_dumps(root, JSON_COMPACT);
    if (!s) goto done;
    size_t sl = strlen(s);
    *out = cy_strndup(s, sl);
    free(s);
    if (!*out) goto done;
    if (len) *len = sl;
    rc = 0;
done:
    cy_free(text);
    cy_free(gk);
    json_decref(root);
    json_decref(arr);
    json_decref(group);
    json_decref(common);
    json_decref(common_ann);
    return rc;
}
