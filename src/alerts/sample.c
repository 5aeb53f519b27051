/* sample: see sample.h. */
#include "alerts/sample.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"

#include <string.h>

void cy_snapshot_init(cy_snapshot *s, int64_t now_ms)
{
    memset(s, 0, sizeof(*s));
    s->now_ms = now_ms;
}

void cy_snapshot_fini(cy_snapshot *s)
{
    cy_free(s->v);
    memset(s, 0, sizeof(*s));
}

void cy_snapshot_reset(cy_snapshot *s, int64_t now_ms)
{
    s->n = 0;
    s->now_ms = now_ms;
}

int cy_snapshot_add(cy_snapshot *s, const char *name, const char *labels, int kind, double value,
                    int64_t changed_ms, bool stale)
{
    if (!labels) labels = "";
    size_t nl = strlen(name), ll = strlen(labels);
    if (nl == 0 || nl >= CY_SAMPLE_NAME_MAX || ll >= CY_SAMPLE_LABELS_MAX) return CY_EINVAL;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        cy_sample *v = cy_realloc(s->v, cap * sizeof(*v));
        if (!v) return CY_ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    cy_sample *x = &s->v[s->n++];
    memcpy(x->name, name, nl + 1);
    memcpy(x->labels, labels, ll + 1);
    x->kind = kind;
    x->value = value;
    x->changed_ms = changed_ms;
    x->stale = stale;
    return 0;
}

const cy_sample *cy_snapshot_find(const cy_snapshot *s, const char *name, const char *labels)
{
    if (!labels) labels = "";
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->v[i].name, name) && !strcmp(s->v[i].labels, labels)) return &s->v[i];
    return NULL;
}

/* Walk one `name="value"` pair at p; returns the position after it (past a
 * comma) or NULL at the end or on a malformed set. */
static const char *next_label(const char *p, const char **name, size_t *nlen, const char **val,
                              size_t *vlen)
{
    if (!*p) return NULL;
    const char *eq = strchr(p, '=');
    if (!eq || eq[1] != '"') return NULL;
    *name = p;
    *nlen = (size_t)(eq - p);
    const char *q = eq + 2;
    *val = q;
    while (*q && *q != '"') {
        if (*q == '\\' && q[1]) q++;
        q++;
    }
    if (*q != '"') return NULL;
    *vlen = (size_t)(q - *val);
    q++;
    if (*q == ',') q++;
    return q;
}

static void unescape(const char *v, size_t vlen, char *out, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < vlen && o + 1 < len; i++) {
        char c = v[i];
        if (c == '\\' && i + 1 < vlen) {
            c = v[++i];
            if (c == 'n') c = '\n';
        }
        out[o++] = c;
    }
    if (len) out[o] = '\0';
}

bool cy_labels_get(const char *labels, const char *label, char *out, size_t len)
{
    const char *p = labels ? labels : "", *n, *v;
    size_t nl, vl, want = strlen(label);
    while ((p = next_label(p, &n, &nl, &v, &vl)) != NULL) {
        if (nl == want && !memcmp(n, label, nl)) {
            unescape(v, vl, out, len);
            return true;
        }
    }
    return false;
}

bool cy_labels_match(const char *labels, const char *selector)
{
    const char *p = selector ? selector : "", *n, *v;
    size_t nl, vl;
    while ((p = next_label(p, &n, &nl, &v, &vl)) != NULL) {
        /* Find the same name=value text in labels. */
        const char *q = labels ? labels : "", *n2, *v2;
        size_t nl2, vl2;
        bool found = false;
        while ((q = next_label(q, &n2, &nl2, &v2, &vl2)) != NULL) {
            if (nl2 == nl && !memcmp(n, n2, nl) && vl2 == vl && !memcmp(v, v2, vl)) {
                found = true;
                break;
            }
        }
        if (!found) return false;
    }
    return true;
}
