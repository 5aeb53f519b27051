/* Tests of the webhook definitions in the registry (src/store/hooks.c,
 * store/hooks.h): add (id and secret formats, every field back as given),
 * get, list (creation order, early stop, a callback that writes), update,
 * delete, secret rotation (the old secret kept with its deadline), enable
 * and disable with a reason, the generation (moves once per change, and
 * only then, seen by another handle), webhook_max, replay requests (taken
 * by their shard only, deleted once taken, kept when the callback refuses),
 * the migration of a version 3 file, and fields of a bad shape.
 */
#include "store_testlib.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "store/hooks.h"

#include <dirent.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef cyt_registry_fixture fixture;

static int setup(void **state)
{
    return cyt_registry_setup(state, "/tmp/cyan-hooks-XXXXXX");
}

#define teardown cyt_registry_teardown

#define MAX 100
#define DEV "0123456789abcdef01234567"

/* A webhook with every field set (strings borrowed: do not fini). */
static cy_webhook full(void)
{
    cy_webhook w;
    memset(&w, 0, sizeof(w));
    w.event = (char *)"temp";
    w.url = (char *)"https://example.com/hook/{{device_id}}";
    strcpy(w.method, "PUT");
    w.headers = (char *)"{\"X-Key\":\"abc\",\"X-Dev\":\"{{device_id}}\"}";
    w.body_kind = 1; /* JSON */
    w.body = (char *)"{\"t\":\"{{data.temp}}\",\"n\":[1,2]}";
    strcpy(w.device_id, DEV);
    w.response_topic = (char *)"devices/{{device_id}}/hook-response/{{name}}";
    w.error_topic = (char *)"devices/{{device_id}}/hook-error/{{name}}";
    w.enabled = true;
    w.ordered = true;
    return w;
}

/* The least webhook: a URL. */
static cy_webhook least(void)
{
    cy_webhook w;
    memset(&w, 0, sizeof(w));
    w.url = (char *)"http://example.com/";
    strcpy(w.method, "POST");
    w.enabled = true;
    return w;
}

static uint64_t gen(cy_registry *r)
{
    uint64_t g = 12345;
    assert_int_equal(cy_registry_webhooks_gen(r, &g), 0);
    return g;
}

static void add_ok(cy_registry *r, cy_webhook *w)
{
    char why[128] = "x";
    assert_int_equal(cy_registry_webhook_add(r, w, MAX, why, sizeof(why)), 0);
    assert_string_equal(why, "");
}

static bool lower_hex(const char *s, size_t n)
{
    if (strlen(s) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789abcdef", s[i])) return false;
    return true;
}

/* "whsec_" + base64 of 24 bytes (the format of webhooks/sign.h). */
static void assert_secret(const char *s)
{
    assert_int_equal(strncmp(s, "whsec_", 6), 0);
    assert_int_equal(strlen(s), 6 + 32);
    unsigned char raw[64];
    int n = EVP_DecodeBlock(raw, (const unsigned char *)s + 6, 32);
    assert_int_equal(n, 24); /* 32 characters, no padding: 24 bytes */
}

static void assert_opt_equal(const char *a, const char *b)
{
    if (!a || !b)
        assert_true(a == b);
    else
        assert_string_equal(a, b);
}

static void assert_same_fields(const cy_webhook *a, const cy_webhook *b)
{
    assert_string_equal(a->event ? a->event : "", b->event ? b->event : "");
    assert_string_equal(a->url, b->url);
    assert_string_equal(a->method, b->method);
    assert_opt_equal(a->headers, b->headers);
    assert_int_equal(a->body_kind, b->body_kind);
    assert_opt_equal(a->body, b->body);
    assert_string_equal(a->device_id, b->device_id);
    assert_opt_equal(a->response_topic, b->response_topic);
    assert_opt_equal(a->error_topic, b->error_topic);
    assert_int_equal(a->enabled, b->enabled);
    assert_int_equal(a->ordered, b->ordered);
    assert_string_equal(a->disabled_reason, b->disabled_reason);
}

/* ---- add / get ---- */

static void test_hooks_add_get(void **state)
{
    fixture *f = *state;
    int64_t t0 = cy_wall_ms();
    cy_webhook w = full();
    add_ok(f->r, &w);
    assert_int_equal(strncmp(w.id, "wh_", 3), 0);
    assert_true(lower_hex(w.id + 3, 16));
    assert_secret(w.secret);
    assert_string_equal(w.old_secret, "");
    assert_true(w.created_at >= t0 && w.created_at <= cy_wall_ms());
    assert_int_equal(w.updated_at, w.created_at);

    cy_webhook g;
    assert_int_equal(cy_registry_webhook_get(f->r, w.id, &g), 0);
    assert_string_equal(g.id, w.id);
    assert_same_fields(&g, &w);
    assert_string_equal(g.secret, w.secret);
    assert_string_equal(g.old_secret, "");
    assert_int_equal(g.old_secret_until, 0);
    assert_int_equal(g.created_at, w.created_at);
    assert_int_equal(g.updated_at, w.updated_at);
    cy_webhook_fini(&g);
    assert_null(g.url);
    cy_webhook_fini(&g); /* twice: safe */

    /* The least webhook: every optional field comes back absent. */
    cy_webhook l = least();
    add_ok(f->r, &l);
    assert_string_not_equal(l.id, w.id);
    assert_string_not_equal(l.secret, w.secret);
    assert_int_equal(cy_registry_webhook_get(f->r, l.id, &g), 0);
    assert_string_equal(g.event, ""); /* NULL event is "" (every event) */
    assert_null(g.headers);
    assert_null(g.body);
    assert_null(g.response_topic);
    assert_null(g.error_topic);
    assert_string_equal(g.device_id, "");
    assert_int_equal(g.body_kind, 0);
    cy_webhook_fini(&g);

    /* Each body kind round-trips. */
    const char *bodies[] = {NULL, "[1, {\"a\": \"{{data}}\"}]", "{\"a\":\"{{name}}\"}",
                            "t {{data}}"};
    for (int k = 1; k <= 3; k++) {
        cy_webhook b = least();
        b.body_kind = k;
        b.body = (char *)bodies[k];
        add_ok(f->r, &b);
        assert_int_equal(cy_registry_webhook_get(f->r, b.id, &g), 0);
        assert_int_equal(g.body_kind, k);
        assert_string_equal(g.body, bodies[k]);
        cy_webhook_fini(&g);
    }
    /* A disabled one keeps its reason. */
    cy_webhook d = least();
    d.enabled = false;
    strcpy(d.disabled_reason, "by the API");
    add_ok(f->r, &d);
    assert_int_equal(cy_registry_webhook_get(f->r, d.id, &g), 0);
    assert_false(g.enabled);
    assert_string_equal(g.disabled_reason, "by the API");
    cy_webhook_fini(&g);
    /* An enabled one has none, whatever it was given. */
    cy_webhook e = least();
    strcpy(e.disabled_reason, "stale");
    add_ok(f->r, &e);
    assert_string_equal(e.disabled_reason, "");
    assert_int_equal(cy_registry_webhook_get(f->r, e.id, &g), 0);
    assert_string_equal(g.disabled_reason, "");
    cy_webhook_fini(&g);
}

static void test_hooks_get_unknown(void **state)
{
    fixture *f = *state;
    cy_webhook g;
    assert_int_equal(cy_registry_webhook_get(f->r, "wh_0000000000000000", &g), CY_ENOENT);
    /* Malformed ids cannot exist. */
    const char *bad[] = {"",
                         "wh_",
                         "wh_000000000000000",
                         "wh_00000000000000000",
                         "wh_000000000000000G",
                         "WH_0000000000000000",
                         "xx_0000000000000000",
                         "wh_0000000000000000' OR 1=1 --"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cy_registry_webhook_get(f->r, bad[i], &g), CY_ENOENT);
    assert_int_equal(cy_registry_webhook_get(f->r, NULL, &g), CY_EINVAL);
    assert_int_equal(cy_registry_webhook_get(f->r, "wh_0000000000000000", NULL), CY_EINVAL);
    assert_int_equal(cy_registry_webhook_get(NULL, "wh_0000000000000000", &g), CY_EINVAL);
}

static void test_hooks_persist(void **state)
{
    fixture *f = *state;
    cy_webhook w = full();
    add_ok(f->r, &w);
    cy_registry_close(f->r);
    assert_int_equal(cy_registry_open(f->path, &f->r), 0);
    cy_webhook g;
    assert_int_equal(cy_registry_webhook_get(f->r, w.id, &g), 0);
    assert_same_fields(&g, &w);
    assert_string_equal(g.secret, w.secret);
    cy_webhook_fini(&g);
    assert_int_equal(gen(f->r), 1);
}

/* ---- list ---- */

typedef struct seen {
    char ids[8][CY_WEBHOOK_ID_LEN + 1];
    int n, stop_at;
    cy_registry *r; /* delete the next one from inside the callback */
} seen;

static int list_fn(void *ctx, const cy_webhook *w)
{
    seen *s = ctx;
    assert_true(s->n < 8);
    assert_non_null(w->url);
    strcpy(s->ids[s->n++], w->id);
    if (s->r && s->n == 1) {
        /* The registry is free for the callback: a write commits. */
        int rc = cy_registry_webhook_set_enabled(s->r, w->id, false, "from list");
        assert_int_equal(rc, 0);
    }
    return s->n == s->stop_at ? 42 : 0;
}

static void test_hooks_list(void **state)
{
    fixture *f = *state;
    seen s = {0};
    assert_int_equal(cy_registry_webhook_list(f->r, list_fn, &s), 0);
    assert_int_equal(s.n, 0);

    char ids[4][CY_WEBHOOK_ID_LEN + 1];
    for (int i = 0; i < 4; i++) {
        cy_webhook w = least();
        add_ok(f->r, &w);
        strcpy(ids[i], w.id);
    }
    /* Deleting one keeps the others' order. */
    assert_int_equal(cy_registry_webhook_delete(f->r, ids[1]), 0);
    memset(&s, 0, sizeof(s));
    assert_int_equal(cy_registry_webhook_list(f->r, list_fn, &s), 0);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.ids[0], ids[0]);
    assert_string_equal(s.ids[1], ids[2]);
    assert_string_equal(s.ids[2], ids[3]);

    memset(&s, 0, sizeof(s));
    s.stop_at = 2;
    assert_int_equal(cy_registry_webhook_list(f->r, list_fn, &s), 42);
    assert_int_equal(s.n, 2);

    memset(&s, 0, sizeof(s));
    s.r = f->r;
    assert_int_equal(cy_registry_webhook_list(f->r, list_fn, &s), 0);
    assert_int_equal(s.n, 3);
    cy_webhook g;
    assert_int_equal(cy_registry_webhook_get(f->r, ids[0], &g), 0);
    assert_false(g.enabled);
    assert_string_equal(g.disabled_reason, "from list");
    cy_webhook_fini(&g);

    assert_int_equal(cy_registry_webhook_list(f->r, NULL, &s), CY_EINVAL);
    assert_int_equal(cy_registry_webhook_list(NULL, list_fn, &s), CY_EINVAL);
}

/* ---- update / delete ---- */

static void test_hooks_update(void **state)
{
    fixture *f = *state;
    cy_webhook w = full();
    add_ok(f->r, &w);
    char secret[CY_WEBHOOK_SECRET_LEN];
    strcpy(secret, w.secret);
    int64_t created = w.created_at;
    usleep(3000); /* updated_at moves in ms */

    cy_webhook u = least();
    strcpy(u.id, w.id);
    u.event = (char *)"other/";
    u.body_kind = 3;
    u.body = (char *)"{{data}}";
    u.ordered = false;
    u.enabled = false;
    strcpy(u.disabled_reason, "by the API");
    strcpy(u.secret, "whsec_forged"); /* not taken */
    u.created_at = 1;                 /* not taken */
    char why[128];
    assert_int_equal(cy_registry_webhook_update(f->r, &u, why, sizeof(why)), 0);
    assert_true(u.updated_at > created);

    cy_webhook g;
    assert_int_equal(cy_registry_webhook_get(f->r, w.id, &g), 0);
    assert_same_fields(&g, &u);
    assert_null(g.headers);
    assert_null(g.response_topic);
    assert_string_equal(g.device_id, "");
    assert_string_equal(g.secret, secret);
    assert_int_equal(g.created_at, created);
    assert_int_equal(g.updated_at, u.updated_at);
    cy_webhook_fini(&g);

    /* A bad field changes nothing. */
    cy_webhook bad = full();
    strcpy(bad.id, w.id);
    strcpy(bad.method, "HEAD");
    assert_int_equal(cy_registry_webhook_update(f->r, &bad, why, sizeof(why)), CY_EINVAL);
    assert_non_null(strstr(why, "method"));
    assert_int_equal(cy_registry_webhook_get(f->r, w.id, &g), 0);
    assert_same_fields(&g, &u);
    cy_webhook_fini(&g);

    /* Unknown and malformed ids. */
    cy_webhook none = least();
    strcpy(none.id, "wh_0000000000000000");
    assert_int_equal(cy_registry_webhook_update(f->r, &none, why, sizeof(why)), CY_ENOENT);
    strcpy(none.id, "nope");
    assert_int_equal(cy_registry_webhook_update(f->r, &none, why, sizeof(why)), CY_ENOENT);
    assert_int_equal(cy_registry_webhook_update(f->r, NULL, why, sizeof(why)), CY_EINVAL);
    /* why may be NULL. */
    strcpy(bad.id, w.id);
    assert_int_equal(cy_registry_webhook_update(f->r, &bad, NULL, 0), CY_EINVAL);
}

static void test_hooks_delete(void **state)
{
    fixture *f = *state;
    cy_webhook a = least(), b = least();
    add_ok(f->r, &a);
    add_ok(f->r, &b);
    assert_int_equal(cy_registry_webhook_delete(f->r, a.id), 0);
    cy_webhook g;
    assert_int_equal(cy_registry_webhook_get(f->r, a.id, &g), CY_ENOENT);
    assert_int_equal(cy_registry_webhook_delete(f->r, a.id), CY_ENOENT);
    assert_int_equal(cy_registry_webhook_delete(f->r, "garbage"), CY_ENOENT);
    assert_int_equal(cy_registry_webhook_delete(f->r, NULL), CY_EINVAL);
    assert_int_equal(cy_registry_webhook_get(f->r, b.id, &g), 0);
    cy_webhook_fini(&g);
}

/* ---- rotation ---- */

static void test_hooks_rotate(void **state)
{
    fixture *f = *state;
    cy_webhook w = least();
    add_ok(f->r, &w);
    char first[CY_WEBHOOK_SECRET_LEN], second[CY_WEBHOOK_SECRET_LEN], third[CY_WEBHOOK_SECRET_LEN];
    strcpy(first, w.secret);

    int64_t t0 = cy_wall_ms();
    assert_int_equal(cy_registry_webhook_rotate(f->r, w.id, second), 0);
    int64_t t1 = cy_wall_ms();
    assert_secret(second);
    assert_string_not_equal(second, first);
    cy_webhook g;
    assert_int_equal(cy_registry_webhook_get(f->r, w.id, &g), 0);
    assert_string_equal(g.secret, second);
    assert_string_equal(g.old_secret, first);
    assert_true(g.old_secret_until >= t0 + CY_WEBHOOK_OLD_SECRET_MS);
    assert_true(g.old_secret_until <= t1 + CY_WEBHOOK_OLD_SECRET_MS);
    cy_webhook_fini(&g);

    /* Again: only the one before is kept. */
    assert_int_equal(cy_registry_webhook_rotate(f->r, w.id, third), 0);
    assert_int_equal(cy_registry_webhook_get(f->r, w.id, &g), 0);
    assert_string_equal(g.secret, third);
    assert_string_equal(g.old_secret, second);
    cy_webhook_fini(&g);

    /* An update keeps both. */
    cy_webhook u = least();
    strcpy(u.id, w.id);
    assert_int_equal(cy_registry_webhook_update(f->r, &u, NULL, 0), 0);
    assert_int_equal(cy_registry_webhook_get(f->r, w.id, &g), 0);
    assert_string_equal(g.secret, third);
    assert_string_equal(g.old_secret, second);
    cy_webhook_fini(&g);

    char out[CY_WEBHOOK_SECRET_LEN] = "x";
    assert_int_equal(cy_registry_webhook_rotate(f->r, "wh_0000000000000000", out), CY_ENOENT);
    assert_string_equal(out, "");
    assert_int_equal(cy_registry_webhook_rotate(f->r, "bad", out), CY_ENOENT);
    assert_int_equal(cy_registry_webhook_rotate(f->r, w.id, NULL), CY_EINVAL);
}

/* ---- enable / disable ---- */

static void test_hooks_enable(void **state)
{
    fixture *f = *state;
    cy_webhook w = least();
    add_ok(f->r, &w);
    cy_webhook g;
    assert_int_equal(cy_registry_webhook_set_enabled(f->r, w.id, false, "410 Gone"), 0);
    assert_int_equal(cy_registry_webhook_get(f->r, w.id, &g), 0);
    assert_false(g.enabled);
    assert_string_equal(g.disabled_reason, "410 Gone");
    assert_true(g.updated_at >= w.updated_at);
    cy_webhook_fini(&g);

    assert_int_equal(cy_registry_webhook_set_enabled(f->r, w.id, true, "ignored"), 0);
    assert_int_equal(cy_registry_webhook_get(f->r, w.id, &g), 0);
    assert_true(g.enabled);
    assert_string_equal(g.disabled_reason, "");
    cy_webhook_fini(&g);

    /* No reason at all is allowed. */
    assert_int_equal(cy_registry_webhook_set_enabled(f->r, w.id, false, NULL), 0);
    assert_int_equal(cy_registry_webhook_get(f->r, w.id, &g), 0);
    assert_false(g.enabled);
    assert_string_equal(g.disabled_reason, "");
    cy_webhook_fini(&g);

    char longer[200];
    memset(longer, 'r', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    assert_int_equal(cy_registry_webhook_set_enabled(f->r, w.id, false, longer), CY_EINVAL);
    assert_int_equal(cy_registry_webhook_set_enabled(f->r, "wh_0000000000000000", true, ""),
                     CY_ENOENT);
    assert_int_equal(cy_registry_webhook_set_enabled(f->r, "x", true, ""), CY_ENOENT);
    assert_int_equal(cy_registry_webhook_set_enabled(f->r, NULL, true, ""), CY_EINVAL);
}

/* ---- the generation ---- */

static void test_hooks_gen(void **state)
{
    fixture *f = *state;
    cy_registry *other;
    assert_int_equal(cy_registry_open(f->path, &other), 0);
    assert_int_equal(gen(f->r), 0);

    cy_webhook w = least();
    add_ok(f->r, &w);
    assert_int_equal(gen(f->r), 1);
    assert_int_equal(gen(other), 1); /* a counter in the file: every process sees it */

    /* Failures and no-ops move nothing. */
    char why[128];
    cy_webhook bad = least();
    bad.url = (char *)"";
    assert_int_equal(cy_registry_webhook_add(f->r, &bad, MAX, why, sizeof(why)), CY_EINVAL);
    cy_webhook over = least();
    assert_int_equal(cy_registry_webhook_add(f->r, &over, 1, why, sizeof(why)), CY_ERANGE);
    assert_int_equal(cy_registry_webhook_delete(f->r, "wh_0000000000000000"), CY_ENOENT);
    assert_int_equal(cy_registry_webhook_set_enabled(f->r, w.id, true, NULL), 0); /* already */
    assert_int_equal(cy_registry_webhook_rotate(f->r, "wh_0000000000000000", why), CY_ENOENT);
    cy_webhook none = least();
    strcpy(none.id, "wh_0000000000000000");
    assert_int_equal(cy_registry_webhook_update(f->r, &none, why, sizeof(why)), CY_ENOENT);
    assert_int_equal(cy_registry_webhook_replay(f->r, "wh_0000000000000000", 0, 0), CY_ENOENT);
    cy_webhook g;
    assert_int_equal(cy_registry_webhook_get(f->r, w.id, &g), 0);
    cy_webhook_fini(&g);
    assert_int_equal(gen(f->r), 1);

    /* Every change moves it by one. */
    uint64_t want = 1;
    cy_webhook u = least();
    strcpy(u.id, w.id);
    assert_int_equal(cy_registry_webhook_update(f->r, &u, why, sizeof(why)), 0);
    assert_int_equal(gen(f->r), ++want);
    assert_int_equal(cy_registry_webhook_set_enabled(f->r, w.id, false, "x"), 0);
    assert_int_equal(gen(f->r), ++want);
    assert_int_equal(cy_registry_webhook_set_enabled(f->r, w.id, false, "x"), 0); /* same */
    assert_int_equal(gen(f->r), want);
    assert_int_equal(cy_registry_webhook_set_enabled(f->r, w.id, false, "y"), 0); /* reason */
    assert_int_equal(gen(f->r), ++want);
    assert_int_equal(cy_registry_webhook_set_enabled(f->r, w.id, true, NULL), 0);
    assert_int_equal(gen(f->r), ++want);
    char secret[CY_WEBHOOK_SECRET_LEN];
    assert_int_equal(cy_registry_webhook_rotate(f->r, w.id, secret), 0);
    assert_int_equal(gen(f->r), ++want);
    assert_int_equal(cy_registry_webhook_replay(f->r, w.id, 3, 0), 0);
    assert_int_equal(gen(f->r), ++want);
    assert_int_equal(cy_registry_webhook_replay(f->r, w.id, 3, 0), 0); /* waiting already */
    assert_int_equal(gen(f->r), want);
    /* A change by another handle is seen here. */
    assert_int_equal(cy_registry_webhook_delete(other, w.id), 0);
    assert_int_equal(gen(f->r), ++want);
    assert_int_equal(gen(other), want);

    assert_int_equal(cy_registry_webhooks_gen(f->r, NULL), CY_EINVAL);
    cy_registry_close(other);
}

/* Shared reads (a shard's loop) do not hide another handle's change. */
static void test_hooks_gen_shared_reads(void **state)
{
    fixture *f = *state;
    cy_registry *other;
    assert_int_equal(cy_registry_open(f->path, &other), 0);
    cy_registry_share_reads(f->r, true);
    /* Open a shared read: a device check that misses the cache. */
    uint8_t s[32] = {0};
    cy_registry_device_check(f->r, DEV, CY_DEVICE_ID_LEN, s, sizeof(s));
    uint64_t g0 = gen(f->r);
    cy_webhook w = least();
    add_ok(other, &w);
    assert_int_equal(gen(f->r), g0 + 1);
    cy_registry_close(other);
}

/* ---- webhook_max ---- */

static void test_hooks_max(void **state)
{
    fixture *f = *state;
    char why[128];
    cy_webhook w = least();
    assert_int_equal(cy_registry_webhook_add(f->r, &w, 0, why, sizeof(why)), CY_ERANGE);
    assert_string_equal(w.id, ""); /* nothing written back */
    cy_webhook a = least(), b = least(), c = least();
    assert_int_equal(cy_registry_webhook_add(f->r, &a, 2, why, sizeof(why)), 0);
    assert_int_equal(cy_registry_webhook_add(f->r, &b, 2, why, sizeof(why)), 0);
    assert_int_equal(cy_registry_webhook_add(f->r, &c, 2, why, sizeof(why)), CY_ERANGE);
    /* Counted in the file, so another handle (a shard) meets it too. */
    cy_registry *other;
    assert_int_equal(cy_registry_open(f->path, &other), 0);
    assert_int_equal(cy_registry_webhook_add(other, &c, 2, why, sizeof(why)), CY_ERANGE);
    assert_int_equal(cy_registry_webhook_delete(other, a.id), 0);
    assert_int_equal(cy_registry_webhook_add(f->r, &c, 2, why, sizeof(why)), 0);
    cy_registry_close(other);
    seen s = {0};
    assert_int_equal(cy_registry_webhook_list(f->r, list_fn, &s), 0);
    assert_int_equal(s.n, 2);
}

/* ---- replay requests ---- */

typedef struct taken {
    char id[8][CY_WEBHOOK_ID_LEN + 1];
    uint64_t seq[8];
    int n, refuse_at;
} taken;

static int take_fn(void *ctx, const char *id, uint64_t seq)
{
    taken *t = ctx;
    if (t->n == t->refuse_at) return CY_ENOMEM;
    assert_true(t->n < 8);
    strcpy(t->id[t->n], id);
    t->seq[t->n++] = seq;
    return 0;
}

static void test_hooks_replays(void **state)
{
    fixture *f = *state;
    cy_webhook a = least(), b = least();
    add_ok(f->r, &a);
    add_ok(f->r, &b);
    uint64_t big = 1764855332123456ULL;
    assert_int_equal(cy_registry_webhook_replay(f->r, a.id, 1, 0), 0);
    assert_int_equal(cy_registry_webhook_replay(f->r, a.id, 2, big), 0);
    assert_int_equal(cy_registry_webhook_replay(f->r, b.id, 1, big + 1), 0);
    assert_int_equal(cy_registry_webhook_replay(f->r, b.id, 1, big + 1), 0); /* once */
    uint64_t g0 = gen(f->r);

    taken t = {.refuse_at = -1};
    assert_int_equal(cy_registry_webhook_replays_take(f->r, 1, take_fn, &t), 0);
    assert_int_equal(t.n, 2);
    assert_string_equal(t.id[0], a.id);
    assert_int_equal(t.seq[0], 0);
    assert_string_equal(t.id[1], b.id);
    assert_int_equal(t.seq[1], big + 1);
    assert_int_equal(gen(f->r), g0); /* taking is not a change of the definitions */
    /* Taken means gone. */
    memset(&t, 0, sizeof(t));
    t.refuse_at = -1;
    assert_int_equal(cy_registry_webhook_replays_take(f->r, 1, take_fn, &t), 0);
    assert_int_equal(t.n, 0);
    /* Shard 0 has none; shard 2 its own. */
    assert_int_equal(cy_registry_webhook_replays_take(f->r, 0, take_fn, &t), 0);
    assert_int_equal(t.n, 0);
    assert_int_equal(cy_registry_webhook_replays_take(f->r, 2, take_fn, &t), 0);
    assert_int_equal(t.n, 1);
    assert_string_equal(t.id[0], a.id);
    assert_int_equal(t.seq[0], big);

    /* A callback that refuses keeps the rest for next time. */
    for (uint64_t s = 1; s <= 3; s++)
        assert_int_equal(cy_registry_webhook_replay(f->r, a.id, 5, s), 0);
    memset(&t, 0, sizeof(t));
    t.refuse_at = 1;
    assert_int_equal(cy_registry_webhook_replays_take(f->r, 5, take_fn, &t), CY_ENOMEM);
    assert_int_equal(t.n, 1);
    assert_int_equal(t.seq[0], 1);
    memset(&t, 0, sizeof(t));
    t.refuse_at = -1;
    assert_int_equal(cy_registry_webhook_replays_take(f->r, 5, take_fn, &t), 0);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.seq[0], 2);
    assert_int_equal(t.seq[1], 3);

    /* Deleting a webhook drops its requests. */
    assert_int_equal(cy_registry_webhook_replay(f->r, a.id, 7, 9), 0);
    assert_int_equal(cy_registry_webhook_replay(f->r, b.id, 7, 9), 0);
    assert_int_equal(cy_registry_webhook_delete(f->r, a.id), 0);
    memset(&t, 0, sizeof(t));
    t.refuse_at = -1;
    assert_int_equal(cy_registry_webhook_replays_take(f->r, 7, take_fn, &t), 0);
    assert_int_equal(t.n, 1);
    assert_string_equal(t.id[0], b.id);

    /* Bad arguments. */
    assert_int_equal(cy_registry_webhook_replay(f->r, a.id, 1, 0), CY_ENOENT); /* deleted */
    assert_int_equal(cy_registry_webhook_replay(f->r, "bad", 1, 0), CY_ENOENT);
    assert_int_equal(cy_registry_webhook_replay(f->r, NULL, 1, 0), CY_EINVAL);
    assert_int_equal(cy_registry_webhook_replay(f->r, b.id, 1, UINT64_MAX), CY_EINVAL);
    assert_int_equal(cy_registry_webhook_replays_take(f->r, 1, NULL, NULL), CY_EINVAL);
}

/* ---- bad fields ---- */

typedef void (*spoil_fn)(cy_webhook *w);

static char long_text[20000];

static void sp_event_long(cy_webhook *w)
{
    w->event = long_text + sizeof(long_text) - 1 - 257;
}
static void sp_event_wild(cy_webhook *w)
{
    w->event = (char *)"temp/+";
}
static void sp_event_hash(cy_webhook *w)
{
    w->event = (char *)"#";
}
static void sp_url_null(cy_webhook *w)
{
    w->url = NULL;
}
static void sp_url_empty(cy_webhook *w)
{
    w->url = (char *)"";
}
static void sp_url_long(cy_webhook *w)
{
    w->url = long_text + sizeof(long_text) - 1 - 2049;
}
static void sp_method(cy_webhook *w)
{
    strcpy(w->method, "post");
}
static void sp_method_empty(cy_webhook *w)
{
    w->method[0] = '\0';
}
static void sp_headers_array(cy_webhook *w)
{
    w->headers = (char *)"[\"X-A\", \"b\"]";
}
static void sp_headers_number(cy_webhook *w)
{
    w->headers = (char *)"{\"X-A\": 1}";
}
static void sp_headers_nested(cy_webhook *w)
{
    w->headers = (char *)"{\"X-A\": {\"b\": \"c\"}}";
}
static void sp_headers_null(cy_webhook *w)
{
    w->headers = (char *)"{\"X-A\": null}";
}
static void sp_headers_notjson(cy_webhook *w)
{
    w->headers = (char *)"{X-A: b}";
}
static void sp_headers_long(cy_webhook *w)
{
    static char h[20000];
    strcpy(h, "{\"X-A\":\"");
    memset(h + 8, 'a', 16400);
    strcpy(h + 8 + 16400, "\"}");
    w->headers = h;
}
static void sp_kind(cy_webhook *w)
{
    w->body_kind = 4;
}
static void sp_kind_negative(cy_webhook *w)
{
    w->body_kind = -1;
}
static void sp_kind_no_body(cy_webhook *w)
{
    w->body = NULL;
}
static void sp_default_with_body(cy_webhook *w)
{
    w->body_kind = 0;
}
static void sp_json_bad(cy_webhook *w)
{
    w->body = (char *)"{\"a\": }";
}
static void sp_form_array(cy_webhook *w)
{
    w->body_kind = 2;
    w->body = (char *)"[\"a\"]";
}
static void sp_form_number(cy_webhook *w)
{
    w->body_kind = 2;
    w->body = (char *)"{\"a\": 2}";
}
static void sp_body_long(cy_webhook *w)
{
    w->body_kind = 3;
    w->body = long_text + sizeof(long_text) - 1 - 16385;
}
static void sp_device_short(cy_webhook *w)
{
    strcpy(w->device_id, "0123");
}
static void sp_device_upper(cy_webhook *w)
{
    strcpy(w->device_id, "0123456789ABCDEF01234567");
}
static void sp_topic_empty(cy_webhook *w)
{
    w->response_topic = (char *)"";
}
static void sp_topic_wild(cy_webhook *w)
{
    w->error_topic = (char *)"devices/+/x";
}
static void sp_topic_dollar(cy_webhook *w)
{
    w->response_topic = (char *)"$cyan/canary/x";
}
static void sp_topic_long(cy_webhook *w)
{
    w->error_topic = long_text + sizeof(long_text) - 1 - 257;
}

static void test_hooks_bad_fields(void **state)
{
    fixture *f = *state;
    memset(long_text, 'a', sizeof(long_text) - 1);
    long_text[sizeof(long_text) - 1] = '\0';
    struct {
        spoil_fn spoil;
        const char *field;
    } cases[] = {
        {sp_event_long, "event"},
        {sp_event_wild, "event"},
        {sp_event_hash, "event"},
        {sp_url_null, "url"},
        {sp_url_empty, "url"},
        {sp_url_long, "url"},
        {sp_method, "method"},
        {sp_method_empty, "method"},
        {sp_headers_array, "headers"},
        {sp_headers_number, "headers"},
        {sp_headers_nested, "headers"},
        {sp_headers_null, "headers"},
        {sp_headers_notjson, "headers"},
        {sp_headers_long, "headers"},
        {sp_kind, "body_kind"},
        {sp_kind_negative, "body_kind"},
        {sp_kind_no_body, "body"},
        {sp_default_with_body, "body"},
        {sp_json_bad, "json"},
        {sp_form_array, "form"},
        {sp_form_number, "form"},
        {sp_body_long, "body"},
        {sp_device_short, "device_id"},
        {sp_device_upper, "device_id"},
        {sp_topic_empty, "response_topic"},
        {sp_topic_wild, "error_topic"},
        {sp_topic_dollar, "response_topic"},
        {sp_topic_long, "error_topic"},
    };
    cy_webhook ok = full();
    add_ok(f->r, &ok);
    uint64_t g0 = gen(f->r);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cy_webhook w = full();
        cases[i].spoil(&w);
        char why[128] = "";
        int rc = cy_registry_webhook_add(f->r, &w, MAX, why, sizeof(why));
        if (rc != CY_EINVAL || strncmp(why, cases[i].field, strlen(cases[i].field)) != 0)
            fail_msg("case %zu (%s): rc %d, why \"%s\"", i, cases[i].field, rc, why);
        assert_string_equal(w.id, "");
        /* The same through update. */
        strcpy(w.id, ok.id);
        why[0] = '\0';
        rc = cy_registry_webhook_update(f->r, &w, why, sizeof(why));
        if (rc != CY_EINVAL || strncmp(why, cases[i].field, strlen(cases[i].field)) != 0)
            fail_msg("update case %zu (%s): rc %d, why \"%s\"", i, cases[i].field, rc, why);
    }
    assert_int_equal(gen(f->r), g0);
    seen s = {0};
    assert_int_equal(cy_registry_webhook_list(f->r, list_fn, &s), 0);
    assert_int_equal(s.n, 1);
    cy_webhook g;
    assert_int_equal(cy_registry_webhook_get(f->r, ok.id, &g), 0);
    assert_same_fields(&g, &ok);
    cy_webhook_fini(&g);

    /* At the limits: fine. */
    cy_webhook edge = full();
    edge.event = long_text + sizeof(long_text) - 1 - 256;
    edge.url = long_text + sizeof(long_text) - 1 - 2048;
    edge.response_topic = long_text + sizeof(long_text) - 1 - 256;
    edge.body_kind = 3;
    edge.body = long_text + sizeof(long_text) - 1 - 16384;
    edge.headers = (char *)"{}";
    add_ok(f->r, &edge);
    /* Every method. */
    const char *methods[] = {"POST", "PUT", "PATCH", "GET", "DELETE"};
    for (int i = 0; i < 5; i++) {
        cy_webhook m = least();
        strcpy(m.method, methods[i]);
        add_ok(f->r, &m);
    }
    assert_int_equal(cy_registry_webhook_add(f->r, NULL, MAX, NULL, 0), CY_EINVAL);
    assert_int_equal(cy_registry_webhook_add(NULL, &edge, MAX, NULL, 0), CY_EINVAL);
}

/* ---- allocation failure ---- */

static void test_hooks_get_alloc_fail(void **state)
{
    fixture *f = *state;
    cy_webhook w = full();
    add_ok(f->r, &w);
    for (long n = 0;; n++) {
        cy_webhook g;
        cy_alloc_fail_after(n);
        int rc = cy_registry_webhook_get(f->r, w.id, &g);
        cy_alloc_fail_after(-1);
        if (rc == 0) {
            assert_true(n > 0);
            assert_same_fields(&g, &w);
            cy_webhook_fini(&g);
            break;
        }
        assert_int_equal(rc, CY_ENOMEM);
        assert_null(g.url); /* nothing left to free */
    }
    for (long n = 0;; n++) {
        seen s = {0};
        cy_alloc_fail_after(n);
        int rc = cy_registry_webhook_list(f->r, list_fn, &s);
        cy_alloc_fail_after(-1);
        if (rc == 0) {
            assert_int_equal(s.n, 1);
            break;
        }
        assert_int_equal(rc, CY_ENOMEM);
    }
}

/* ---- migration ---- */

/* The exact version 3 schema (registry.c before webhooks). Do not edit: it
 * is the input the migration must take. */
static const char schema_v3[] = "CREATE TABLE IF NOT EXISTS devices("
                                " id TEXT PRIMARY KEY NOT NULL,"
                                " name TEXT NOT NULL UNIQUE,"
                                " salt BLOB NOT NULL,"
                                " hash BLOB NOT NULL,"
                                " created_at INTEGER NOT NULL, internal INTEGER NOT NULL"
                                " DEFAULT 0);"
                                "CREATE TABLE IF NOT EXISTS tokens("
                                " id TEXT PRIMARY KEY NOT NULL,"
                                " name TEXT NOT NULL,"
                                " scope INTEGER NOT NULL,"
                                " salt BLOB NOT NULL,"
                                " hash BLOB NOT NULL,"
                                " created_at INTEGER NOT NULL);"
                                "PRAGMA user_version = 3;";

#define sql_exec(path, sql) cyt_sql_exec((path), (sql))

static int64_t sql_int(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Every CREATE statement of the file, in name order, joined (caller frees). */
static char *schema_text(const char *path)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT group_concat(type || ' ' || name || ': ' ||"
                                        " coalesce(sql, ''), char(10)) FROM (SELECT * FROM"
                                        " sqlite_schema ORDER BY name)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    char *s = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    assert_non_null(s);
    return s;
}

static void test_hooks_migrate_v3(void **state)
{
    fixture *f = *state;
    char old[256];
    snprintf(old, sizeof(old), "%s/v3.db", f->dir);
    sql_exec(old, "PRAGMA journal_mode = WAL");
    sql_exec(old, schema_v3);
    sql_exec(old, "INSERT INTO devices VALUES('" DEV "', 'old', x'00', x'00', 5, 0)");
    assert_int_equal(sql_int(old, "PRAGMA user_version"), 3);

    cy_registry *r = NULL;
    assert_int_equal(cy_registry_open(old, &r), 0);
    /* 4 for the webhooks, and on to the current version (5: devices.psk). */
    assert_true(sql_int(old, "PRAGMA user_version") >= 4);
    cy_device d;
    assert_int_equal(cy_registry_device_get(r, "old", &d), 0); /* devices untouched */
    assert_string_equal(d.id, DEV);
    assert_int_equal(gen(r), 0);
    seen s = {0};
    assert_int_equal(cy_registry_webhook_list(r, list_fn, &s), 0);
    assert_int_equal(s.n, 0);
    cy_webhook w = full();
    add_ok(r, &w);
    assert_int_equal(gen(r), 1);
    cy_registry_close(r);

    /* Reopening migrates nothing more and keeps the webhook. */
    assert_int_equal(cy_registry_open(old, &r), 0);
    cy_webhook g;
    assert_int_equal(cy_registry_webhook_get(r, w.id, &g), 0);
    assert_same_fields(&g, &w);
    cy_webhook_fini(&g);
    assert_int_equal(gen(r), 1);
    cy_registry_close(r);

    /* The migrated file is a new one, statement for statement. */
    char *got = schema_text(old), *want = schema_text(f->path);
    assert_string_equal(got, want);
    free(got);
    free(want);
}

/* A failed migration leaves the file at version 3: a view named "meta"
 * makes the CREATE TABLE fail after the webhook tables were made. */
static void test_hooks_migrate_atomic(void **state)
{
    fixture *f = *state;
    char old[256];
    snprintf(old, sizeof(old), "%s/v3.db", f->dir);
    sql_exec(old, "PRAGMA journal_mode = WAL");
    sql_exec(old, schema_v3);
    sql_exec(old, "CREATE VIEW meta AS SELECT 1");
    cy_registry *r = (cy_registry *)1;
    assert_int_equal(cy_registry_open(old, &r), CY_ESTORE);
    assert_null(r);
    assert_int_equal(sql_int(old, "PRAGMA user_version"), 3);
    assert_int_equal(sql_int(old, "SELECT count(*) FROM sqlite_schema WHERE name = 'webhooks'"), 0);
    sql_exec(old, "DROP VIEW meta");
    assert_int_equal(cy_registry_open(old, &r), 0);
    assert_int_equal(gen(r), 0);
    cy_registry_close(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hooks_add_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_get_unknown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_persist, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_rotate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_enable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_gen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_gen_shared_reads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_max, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_replays, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_bad_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_get_alloc_fail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_migrate_v3, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks_migrate_atomic, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
