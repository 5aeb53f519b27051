/* Tests of cy_registry (src/store/registry.c): device creation (id and
 * secret formats, name rules, uniqueness), secret checks (right, wrong,
 * unknown, malformed), what is stored (salt and HMAC, never the secret),
 * lookup and removal by id or name, listing in creation order, reopening,
 * shared read transactions (one snapshot until cy_registry_end_reads),
 * and the open error paths. API tokens: creation (format, scopes, names),
 * checks (right, wrong, unknown, malformed), what is stored, revocation,
 * listing, the first-token bootstrap and its file, and the migrations of a
 * version 1 registry (devices only) and a version 2 one (tokens) to the
 * current version (4). Internal devices and tokens (cyan's canaries):
 * ensured with an id a predicate takes, a new secret each time, hidden
 * from get, remove and list, told apart by cy_registry_device_internal;
 * internal tokens replaced by a new id, listed with their scope, ignored
 * by the bootstrap. DTLS PSKs (schema version 5): issued with every
 * device, read back, distinct, sealed under the key file (mode 0600, never
 * the text in the registry), refused when the key file is missing or the
 * record was tampered with (checks still work), rotated, seen by another
 * handle, and absent from the devices of a migrated version 4 file until
 * one is issued.
 */
#include "store_testlib.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "store/store.h"
#include "core/cy_clock.h"

#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef cyt_registry_fixture fixture;

static int setup(void **state)
{
    return cyt_registry_setup(state, "/tmp/cyan-registry-XXXXXX");
}

#define teardown cyt_registry_teardown

static bool lower_hex(const char *s, size_t n)
{
    if (strlen(s) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789abcdef", s[i])) return false;
    return true;
}

typedef struct added {
    char id[CY_DEVICE_ID_LEN + 1];
    char secret[CY_DEVICE_SECRET_LEN + 1];
    char psk[CY_DEVICE_PSK_LEN + 1];
} added;

static added add(cy_registry *r, const char *name)
{
    added a;
    assert_int_equal(cy_registry_device_add(r, name, a.id, a.secret, a.psk), 0);
    return a;
}

static int check(cy_registry *r, const char *id, const char *secret)
{
    return cy_registry_device_check(r, id, strlen(id), (const uint8_t *)secret, strlen(secret));
}

/* Let the registry's cache recheck come due (it asks SQLite whether
 * another connection committed at most every 200 ms): what another
 * connection removed is refused after this. */
static void past_recheck(void)
{
    struct timespec ts = {0, 250 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

/* ---- open ---- */

static void test_cy_registry_open_missing_dir(void **state)
{
    fixture *f = *state;
    char p[256];
    snprintf(p, sizeof(p), "%s/missing/registry.db", f->dir);
    cy_registry *r = (cy_registry *)1;
    assert_int_equal(cy_registry_open(p, &r), CY_ESTORE);
    assert_null(r);
    assert_int_equal(cy_registry_open(NULL, &r), CY_EINVAL);
    cy_registry_close(NULL);
}

static void test_cy_registry_open_newer_schema(void **state)
{
    fixture *f = *state;
    sqlite3 *db;
    char p[256];
    snprintf(p, sizeof(p), "%s/future.db", f->dir);
    assert_int_equal(sqlite3_open(p, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 7", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    cy_registry *r = NULL;
    assert_int_equal(cy_registry_open(p, &r), CY_ESTORE);
    assert_null(r);
}

static void test_cy_registry_open_alloc_fail(void **state)
{
    fixture *f = *state;
    for (long n = 0;; n++) {
        cy_registry *r = NULL;
        cy_alloc_fail_after(n);
        int rc = cy_registry_open(f->path, &r);
        cy_alloc_fail_after(-1);
        if (rc == 0) {
            assert_true(n > 0);
            cy_registry_close(r);
            break;
        }
        assert_int_equal(rc, CY_ENOMEM);
        assert_null(r);
    }
}

/* ---- add / check ---- */

static void test_cy_registry_device_add_formats(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "sensor-1");
    added b = add(f->r, "sensor-2");
    assert_true(lower_hex(a.id, CY_DEVICE_ID_LEN));
    assert_true(lower_hex(a.secret, CY_DEVICE_SECRET_LEN));
    assert_string_not_equal(a.id, b.id);
    assert_string_not_equal(a.secret, b.secret);
    assert_string_not_equal(a.id, a.secret);
}

/* Only the salt and HMAC-SHA256(salt, secret as hex text) are stored. */
static void test_cy_registry_device_add_stores_hash_only(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "dev");
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT name, salt, hash FROM devices WHERE id = ?1", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, a.id, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "dev");
    assert_int_equal(sqlite3_column_bytes(st, 1), 16);
    assert_int_equal(sqlite3_column_bytes(st, 2), 32);
    uint8_t want[32];
    unsigned int len = 0;
    assert_non_null(HMAC(EVP_sha256(), sqlite3_column_blob(st, 1), 16, (const uint8_t *)a.secret,
                         CY_DEVICE_SECRET_LEN, want, &len));
    assert_int_equal(len, 32);
    assert_memory_equal(sqlite3_column_blob(st, 2), want, 32);
    sqlite3_finalize(st);
    sqlite3_close(db);

    /* The secret's text appears nowhere in the files. */
    const char *suffixes[] = {"", "-wal"};
    for (int i = 0; i < 2; i++) {
        char p[256];
        snprintf(p, sizeof(p), "%s%s", f->path, suffixes[i]);
        FILE *fp = fopen(p, "rb");
        if (!fp) continue;
        static char buf[1 << 20];
        size_t n = fread(buf, 1, sizeof(buf), fp);
        fclose(fp);
        for (size_t k = 0; k + CY_DEVICE_SECRET_LEN <= n; k++)
            assert_false(memcmp(buf + k, a.secret, CY_DEVICE_SECRET_LEN) == 0);
    }
}

static void test_cy_registry_device_check_right_secret(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "dev");
    added b = add(f->r, "other");
    assert_int_equal(check(f->r, a.id, a.secret), 0);
    assert_int_equal(check(f->r, b.id, b.secret), 0);
    /* The id need not be NUL-terminated: lengths are explicit. */
    char idbuf[CY_DEVICE_ID_LEN + 4];
    memcpy(idbuf, a.id, CY_DEVICE_ID_LEN);
    memcpy(idbuf + CY_DEVICE_ID_LEN, "zzz", 4);
    assert_int_equal(cy_registry_device_check(f->r, idbuf, CY_DEVICE_ID_LEN,
                                              (const uint8_t *)a.secret, CY_DEVICE_SECRET_LEN),
                     0);
}

static void test_cy_registry_device_check_wrong_secret(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "dev");
    added b = add(f->r, "other");
    assert_int_equal(check(f->r, a.id, b.secret), CY_EACCES);
    char s[CY_DEVICE_SECRET_LEN + 2];
    strcpy(s, a.secret);
    s[CY_DEVICE_SECRET_LEN - 1] ^= 1; /* one bit off */
    assert_int_equal(check(f->r, a.id, s), CY_EACCES);
    strcpy(s, a.secret);
    strcat(s, "0");
    assert_int_equal(check(f->r, a.id, s), CY_EACCES); /* too long */
    s[CY_DEVICE_SECRET_LEN - 1] = '\0';
    assert_int_equal(check(f->r, a.id, s), CY_EACCES); /* too short */
    assert_int_equal(check(f->r, a.id, ""), CY_EACCES);
    assert_int_equal(cy_registry_device_check(f->r, a.id, CY_DEVICE_ID_LEN, NULL, 0), CY_EACCES);
}

static void test_cy_registry_device_check_uppercase_secret(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "dev");
    char s[CY_DEVICE_SECRET_LEN + 1];
    strcpy(s, a.secret);
    bool changed = false;
    for (char *p = s; *p; p++)
        if (*p >= 'a' && *p <= 'f') {
            *p = (char)(*p - 32);
            changed = true;
        }
    if (changed) assert_int_equal(check(f->r, a.id, s), CY_EACCES);
}

static void test_cy_registry_device_check_unknown_id(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "dev");
    assert_int_equal(check(f->r, "000000000000000000000000", a.secret), CY_ENOENT);
    assert_int_equal(check(f->r, "short", a.secret), CY_ENOENT);
    assert_int_equal(check(f->r, "", a.secret), CY_ENOENT);
    assert_int_equal(check(f->r, "dev", a.secret), CY_ENOENT); /* a name is not an id */
    char longer[CY_DEVICE_ID_LEN + 2];
    snprintf(longer, sizeof(longer), "%s0", a.id);
    assert_int_equal(check(f->r, longer, a.secret), CY_ENOENT);
    assert_int_equal(cy_registry_device_check(f->r, NULL, 0, NULL, 0), CY_ENOENT);
    assert_int_equal(cy_registry_device_check(f->r, NULL, 5, NULL, 0), CY_EINVAL);
}

static void test_cy_registry_device_add_duplicate_name(void **state)
{
    fixture *f = *state;
    add(f->r, "dup");
    char id[CY_DEVICE_ID_LEN + 1] = "x", secret[CY_DEVICE_SECRET_LEN + 1] = "x";
    assert_int_equal(cy_registry_device_add(f->r, "dup", id, secret, NULL), CY_EEXIST);
    assert_string_equal(id, "");
    assert_string_equal(secret, "");
    add(f->r, "Dup"); /* names are case-sensitive */
}

static void test_cy_registry_device_add_bad_names(void **state)
{
    fixture *f = *state;
    char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1];
    char long_name[CY_DEVICE_NAME_MAX + 2];
    memset(long_name, 'a', CY_DEVICE_NAME_MAX + 1);
    long_name[CY_DEVICE_NAME_MAX + 1] = '\0';
    const char *bad[] = {
        "",
        "has space",
        "slash/",
        "tab\t",
        "nl\n",
        "quote'",
        "semi;",
        "caf\xc3\xa9",
        "plus+",
        "hash#",
        "a\x7f",
        long_name,
        "0123456789abcdef01234567", /* looks like an id */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cy_registry_device_add(f->r, bad[i], id, secret, NULL), CY_EINVAL);
    assert_int_equal(cy_registry_device_add(f->r, NULL, id, secret, NULL), CY_EINVAL);
    assert_int_equal(cy_registry_device_add(f->r, "ok", NULL, secret, NULL), CY_EINVAL);
    assert_int_equal(cy_registry_device_add(f->r, "ok", id, NULL, NULL), CY_EINVAL);

    long_name[CY_DEVICE_NAME_MAX] = '\0'; /* exactly the maximum */
    add(f->r, long_name);
    add(f->r, "x");
    add(f->r, "Az09-_.");
    add(f->r, "0123456789ABCDEF01234567"); /* upper case is not id-shaped */
    add(f->r, "0123456789abcdef0123456");  /* 23 characters */
}

/* ---- get / remove / list ---- */

static void test_cy_registry_device_get(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "lamp");
    cy_device d;
    memset(&d, 0xff, sizeof(d));
    assert_int_equal(cy_registry_device_get(f->r, a.id, &d), 0);
    assert_string_equal(d.id, a.id);
    assert_string_equal(d.name, "lamp");
    assert_true(d.created_at > 1600000000000); /* wall ms */
    memset(&d, 0, sizeof(d));
    assert_int_equal(cy_registry_device_get(f->r, "lamp", &d), 0);
    assert_string_equal(d.id, a.id);
    assert_int_equal(cy_registry_device_get(f->r, "nope", &d), CY_ENOENT);
    assert_int_equal(cy_registry_device_get(f->r, "", &d), CY_ENOENT);
    assert_int_equal(cy_registry_device_get(f->r, NULL, &d), CY_EINVAL);
}

static void test_cy_registry_device_remove(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "a");
    added b = add(f->r, "b");
    assert_int_equal(cy_registry_device_remove(f->r, a.id), 0);
    assert_int_equal(cy_registry_device_remove(f->r, "b"), 0);
    assert_int_equal(cy_registry_device_remove(f->r, "a"), CY_ENOENT);
    assert_int_equal(cy_registry_device_remove(f->r, b.id), CY_ENOENT);
    assert_int_equal(cy_registry_device_remove(f->r, NULL), CY_EINVAL);
    assert_int_equal(check(f->r, a.id, a.secret), CY_ENOENT);
    cy_device d;
    assert_int_equal(cy_registry_device_get(f->r, "b", &d), CY_ENOENT);
    /* The name is free again, under a new id and secret. */
    added a2 = add(f->r, "a");
    assert_string_not_equal(a2.id, a.id);
    assert_int_equal(check(f->r, a2.id, a2.secret), 0);
    assert_int_equal(check(f->r, a2.id, a.secret), CY_EACCES);
}

typedef struct listing {
    char names[16][CY_DEVICE_NAME_MAX + 1];
    int n;
    int stop_after;
} listing;

static int on_device(void *ctx, const cy_device *d)
{
    listing *l = ctx;
    assert_true(l->n < 16);
    assert_int_equal(strlen(d->id), CY_DEVICE_ID_LEN);
    strcpy(l->names[l->n++], d->name);
    return l->n == l->stop_after ? 7 : 0;
}

static void test_cy_registry_device_list(void **state)
{
    fixture *f = *state;
    listing l = {0};
    assert_int_equal(cy_registry_device_list(f->r, on_device, &l), 0);
    assert_int_equal(l.n, 0);

    const char *names[] = {"zeta", "alpha", "mid", "beta"};
    for (int i = 0; i < 4; i++)
        add(f->r, names[i]);
    assert_int_equal(cy_registry_device_remove(f->r, "mid"), 0);
    add(f->r, "last");
    assert_int_equal(cy_registry_device_list(f->r, on_device, &l), 0);
    assert_int_equal(l.n, 4);
    assert_string_equal(l.names[0], "zeta");
    assert_string_equal(l.names[1], "alpha");
    assert_string_equal(l.names[2], "beta");
    assert_string_equal(l.names[3], "last");

    memset(&l, 0, sizeof(l));
    l.stop_after = 2;
    assert_int_equal(cy_registry_device_list(f->r, on_device, &l), 7);
    assert_int_equal(l.n, 2);
    assert_int_equal(cy_registry_device_list(f->r, NULL, NULL), CY_EINVAL);
}

static void test_cy_registry_device_add_persists(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "kept");
    cy_registry_close(f->r);
    f->r = NULL;
    assert_int_equal(cy_registry_open(f->path, &f->r), 0);
    assert_int_equal(check(f->r, a.id, a.secret), 0);
    /* A second handle (another process in production) sees it too. */
    cy_registry *other;
    assert_int_equal(cy_registry_open(f->path, &other), 0);
    added b = add(f->r, "new");
    assert_int_equal(check(other, b.id, b.secret), 0);
    assert_int_equal(cy_registry_device_remove(other, "kept"), 0);
    past_recheck();
    assert_int_equal(check(f->r, a.id, a.secret), CY_ENOENT);
    cy_registry_close(other);
}

/* ---- API tokens ---- */

#define TOKEN_LEN 49 /* "cyt_" 12 hex "_" 32 hex */

typedef struct made {
    char id[CY_TOKEN_ID_LEN + 1];
    char token[CY_TOKEN_MAX + 1];
} made;

static made mk(cy_registry *r, const char *name, unsigned scopes)
{
    made m;
    assert_int_equal(cy_registry_token_create(r, name, scopes, 0, m.id, m.token), 0);
    return m;
}

/* Check token[0..len) now; *scope (may be NULL: CY_EINVAL, as the old
 * check said) and id (may be NULL) get the results. */
static int tcheckn(cy_registry *r, const char *token, size_t len, int *scope,
                   char id[CY_TOKEN_ID_LEN + 1])
{
    cy_token_auth ta;
    int rc = cy_registry_token_check(r, token, len, cy_wall_ms(), scope ? &ta : NULL);
    if (scope) *scope = (int)ta.scopes;
    if (id) memcpy(id, scope ? ta.id : "", scope ? sizeof(ta.id) : 1);
    return rc;
}

/* Check a NUL-terminated token; *scope and id get the results. */
static int tcheck(cy_registry *r, const char *token, int *scope, char id[CY_TOKEN_ID_LEN + 1])
{
    return tcheckn(r, token, strlen(token), scope, id);
}

static bool token_shaped(const char *t)
{
    return strlen(t) == TOKEN_LEN && strncmp(t, "cyt_", 4) == 0 && t[16] == '_' &&
           strspn(t + 4, "0123456789abcdef") == CY_TOKEN_ID_LEN &&
           strspn(t + 17, "0123456789abcdef") == 32;
}

static void test_cy_registry_token_create_formats(void **state)
{
    fixture *f = *state;
    made a = mk(f->r, "ci", CY_SCOPE_ALL);
    made b = mk(f->r, "ci", CY_SCOPE_READ_ONLY); /* names need not be unique */
    assert_true(lower_hex(a.id, CY_TOKEN_ID_LEN));
    assert_true(token_shaped(a.token));
    assert_true(token_shaped(b.token));
    assert_memory_equal(a.token + 4, a.id, CY_TOKEN_ID_LEN); /* the id is inside */
    assert_string_not_equal(a.id, b.id);
    assert_string_not_equal(a.token + 17, b.token + 17);
    assert_true(TOKEN_LEN <= CY_TOKEN_MAX);
}

static void test_cy_registry_token_check_right_secret(void **state)
{
    fixture *f = *state;
    made full = mk(f->r, "full", CY_SCOPE_ALL);
    made read = mk(f->r, "read", CY_SCOPE_READ_ONLY);
    int scope = -1;
    char id[CY_TOKEN_ID_LEN + 1];
    assert_int_equal(tcheck(f->r, full.token, &scope, id), 0);
    assert_int_equal(scope, CY_SCOPE_ALL);
    assert_string_equal(id, full.id);
    assert_int_equal(tcheck(f->r, read.token, &scope, id), 0);
    assert_int_equal(scope, CY_SCOPE_READ_ONLY);
    assert_string_equal(id, read.id);
    scope = -1;
    assert_int_equal(tcheck(f->r, read.token, &scope, NULL), 0); /* id_out may be NULL */
    assert_int_equal(scope, CY_SCOPE_READ_ONLY);
    /* The text need not be NUL-terminated: the length is explicit. */
    char buf[TOKEN_LEN + 8];
    memcpy(buf, full.token, TOKEN_LEN);
    memcpy(buf + TOKEN_LEN, "abc\r\n", 6);
    assert_int_equal(tcheckn(f->r, buf, TOKEN_LEN, &scope, NULL), 0);
    assert_int_equal(scope, CY_SCOPE_ALL);
    /* A token's id and secret are no device's credentials. */
    assert_int_equal(check(f->r, full.id, full.token + 17), CY_ENOENT);
}

static void test_cy_registry_token_check_wrong_secret(void **state)
{
    fixture *f = *state;
    made a = mk(f->r, "a", CY_SCOPE_ALL);
    made b = mk(f->r, "b", CY_SCOPE_ALL);
    int scope = -1;
    char id[CY_TOKEN_ID_LEN + 1] = "x";
    char t[TOKEN_LEN + 1];
    strcpy(t, a.token);
    t[TOKEN_LEN - 1] = t[TOKEN_LEN - 1] == '0' ? '1' : '0'; /* last character off */
    assert_int_equal(tcheck(f->r, t, &scope, id), CY_EACCES);
    assert_int_equal(scope, 0);
    assert_string_equal(id, "");
    strcpy(t, a.token);
    t[17] = t[17] == 'f' ? 'e' : 'f'; /* first secret character off */
    assert_int_equal(tcheck(f->r, t, &scope, id), CY_EACCES);
    /* a's id with b's secret */
    memcpy(t + 17, b.token + 17, 32);
    assert_int_equal(tcheck(f->r, t, &scope, id), CY_EACCES);
    assert_int_equal(tcheck(f->r, a.token, &scope, id), 0); /* still fine */
}

static void test_cy_registry_token_check_unknown_id(void **state)
{
    fixture *f = *state;
    made a = mk(f->r, "a", CY_SCOPE_ALL);
    int scope = -1;
    char id[CY_TOKEN_ID_LEN + 1] = "x";
    char t[TOKEN_LEN + 1];
    strcpy(t, a.token);
    memcpy(t + 4, "000000000000", CY_TOKEN_ID_LEN);
    if (strcmp(a.id, "000000000000") == 0) memcpy(t + 4, "111111111111", CY_TOKEN_ID_LEN);
    assert_int_equal(tcheck(f->r, t, &scope, id), CY_EACCES);
    assert_int_equal(scope, 0);
    assert_string_equal(id, "");
    /* An empty registry answers the same. */
    assert_int_equal(cy_registry_token_revoke(f->r, a.id), 0);
    assert_int_equal(tcheck(f->r, a.token, &scope, id), CY_EACCES);
}

static void test_cy_registry_token_check_malformed(void **state)
{
    fixture *f = *state;
    made a = mk(f->r, "a", CY_SCOPE_ALL);
    int scope = -1;
    char id[CY_TOKEN_ID_LEN + 1] = "x";
    char t[CY_TOKEN_MAX + 16];
    /* Every variant below is a's token changed in one way. */
    static const struct {
        size_t at;
        char c;
    } swaps[] = {
        {0, 'C'},  {0, 'x'},   {2, 'x'},   {3, '-'}, /* prefix */
        {4, 'A'},  {9, 'g'},   {15, ' '},            /* id: upper case, not hex */
        {16, '-'}, {16, 'a'},                        /* separator */
        {17, 'A'}, {30, 'z'},  {48, '_'},            /* secret */
        {0, '\0'}, {20, '\0'}, {48, '\0'},           /* a NUL inside len */
    };
    for (size_t i = 0; i < sizeof(swaps) / sizeof(swaps[0]); i++) {
        memcpy(t, a.token, TOKEN_LEN + 1);
        t[swaps[i].at] = swaps[i].c;
        assert_int_equal(tcheckn(f->r, t, TOKEN_LEN, &scope, id), CY_EINVAL);
        assert_int_equal(scope, 0);
        assert_string_equal(id, "");
    }
    /* Lengths: one short, one long (hex or NUL), empty. */
    memcpy(t, a.token, TOKEN_LEN + 1);
    assert_int_equal(tcheckn(f->r, t, TOKEN_LEN - 1, &scope, id), CY_EINVAL);
    assert_int_equal(tcheckn(f->r, t, TOKEN_LEN + 1, &scope, id), CY_EINVAL);
    strcat(t, "0");
    assert_int_equal(tcheck(f->r, t, &scope, id), CY_EINVAL);
    assert_int_equal(tcheck(f->r, "", &scope, id), CY_EINVAL);
    assert_int_equal(tcheck(f->r, "cyt_", &scope, id), CY_EINVAL);
    assert_int_equal(tcheck(f->r, a.token + 4, &scope, id), CY_EINVAL); /* no prefix */
    /* The id alone; the token behind an HTTP scheme. */
    assert_int_equal(tcheck(f->r, a.id, &scope, id), CY_EINVAL);
    snprintf(t, sizeof(t), "Bearer %s", a.token);
    assert_int_equal(tcheck(f->r, t, &scope, id), CY_EINVAL);
    assert_int_equal(tcheckn(f->r, NULL, 0, &scope, id), CY_EINVAL);
    assert_int_equal(tcheckn(f->r, NULL, TOKEN_LEN, &scope, id), CY_EINVAL);
    assert_int_equal(tcheckn(f->r, a.token, TOKEN_LEN, NULL, id), CY_EINVAL);
    /* None of that hurt the real one. */
    assert_int_equal(tcheck(f->r, a.token, &scope, id), 0);
}

static void test_cy_registry_token_create_bad_args(void **state)
{
    fixture *f = *state;
    char id[CY_TOKEN_ID_LEN + 1] = "x", token[CY_TOKEN_MAX + 1] = "x";
    char long_name[CY_TOKEN_NAME_MAX + 2];
    memset(long_name, 'a', CY_TOKEN_NAME_MAX + 1);
    long_name[CY_TOKEN_NAME_MAX + 1] = '\0';
    const char *bad[] = {"", "has space", "slash/", "nl\n", "quote'", "caf\xc3\xa9", long_name};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(cy_registry_token_create(f->r, bad[i], CY_SCOPE_ALL, 0, id, token),
                         CY_EINVAL);
        assert_string_equal(id, "");
        assert_string_equal(token, "");
    }
    /* No scope, the internal one (alone or with others), an unknown bit. */
    const unsigned bad_scopes[] = {0, CY_SCOPE_INTERNAL, CY_SCOPE_ALL | CY_SCOPE_INTERNAL, 1u << 7,
                                   ~0u};
    for (size_t i = 0; i < sizeof(bad_scopes) / sizeof(bad_scopes[0]); i++)
        assert_int_equal(cy_registry_token_create(f->r, "ok", bad_scopes[i], 0, id, token),
                         CY_EINVAL);
    assert_int_equal(cy_registry_token_create(f->r, "ok", CY_SCOPE_ALL, -1, id, token), CY_EINVAL);
    assert_int_equal(cy_registry_token_create(f->r, NULL, CY_SCOPE_ALL, 0, id, token), CY_EINVAL);
    assert_int_equal(cy_registry_token_create(f->r, "ok", CY_SCOPE_ALL, 0, NULL, token), CY_EINVAL);
    assert_int_equal(cy_registry_token_create(f->r, "ok", CY_SCOPE_ALL, 0, id, NULL), CY_EINVAL);

    long_name[CY_TOKEN_NAME_MAX] = '\0'; /* exactly the maximum */
    mk(f->r, long_name, CY_SCOPE_READ_ONLY);
    mk(f->r, "Az09-_.", CY_SCOPE_ALL);
    /* Tokens are revoked by id only, so an id-shaped name is harmless. */
    mk(f->r, "0123456789abcdef01234567", CY_SCOPE_ALL);
    mk(f->r, "0123456789ab", CY_SCOPE_ALL);
}

/* Only the salt and HMAC-SHA256(salt, the secret's hex text) are stored. */
static void test_cy_registry_token_create_stores_hash_only(void **state)
{
    fixture *f = *state;
    made a = mk(f->r, "ci", CY_SCOPE_READ_ONLY);
    const char *secret = a.token + 17;
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT name, scope, salt, hash FROM tokens WHERE id = ?1",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, a.id, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ci");
    assert_int_equal(sqlite3_column_int(st, 1), CY_SCOPE_READ_ONLY);
    assert_int_equal(sqlite3_column_bytes(st, 2), 16);
    assert_int_equal(sqlite3_column_bytes(st, 3), 32);
    uint8_t want[32];
    unsigned int len = 0;
    assert_non_null(HMAC(EVP_sha256(), sqlite3_column_blob(st, 2), 16, (const uint8_t *)secret, 32,
                         want, &len));
    assert_int_equal(len, 32);
    assert_memory_equal(sqlite3_column_blob(st, 3), want, 32);
    sqlite3_finalize(st);
    sqlite3_close(db);

    const char *suffixes[] = {"", "-wal"};
    for (int i = 0; i < 2; i++) {
        char p[256];
        snprintf(p, sizeof(p), "%s%s", f->path, suffixes[i]);
        FILE *fp = fopen(p, "rb");
        if (!fp) continue;
        static char buf[1 << 20];
        size_t n = fread(buf, 1, sizeof(buf), fp);
        fclose(fp);
        for (size_t k = 0; k + 32 <= n; k++)
            assert_false(memcmp(buf + k, secret, 32) == 0);
    }
}

static void test_cy_registry_token_revoke(void **state)
{
    fixture *f = *state;
    made a = mk(f->r, "a", CY_SCOPE_ALL);
    made b = mk(f->r, "b", CY_SCOPE_READ_ONLY);
    int scope;
    assert_int_equal(cy_registry_token_revoke(f->r, a.id), 0);
    assert_int_equal(tcheck(f->r, a.token, &scope, NULL), CY_EACCES);
    assert_int_equal(tcheck(f->r, b.token, &scope, NULL), 0);
    assert_int_equal(cy_registry_token_revoke(f->r, a.id), CY_ENOENT);
    assert_int_equal(cy_registry_token_revoke(f->r, "b"), CY_ENOENT); /* not by name */
    assert_int_equal(cy_registry_token_revoke(f->r, b.token), CY_ENOENT);
    assert_int_equal(cy_registry_token_revoke(f->r, ""), CY_ENOENT);
    assert_int_equal(cy_registry_token_revoke(f->r, NULL), CY_EINVAL);
    assert_int_equal(tcheck(f->r, b.token, &scope, NULL), 0);
    /* Revoking a token leaves the devices alone, and the other way round. */
    added d = add(f->r, "dev");
    assert_int_equal(cy_registry_token_revoke(f->r, d.id), CY_ENOENT);
    assert_int_equal(cy_registry_device_remove(f->r, b.id), CY_ENOENT);
    assert_int_equal(check(f->r, d.id, d.secret), 0);
}

typedef struct token_listing {
    cy_token t[16];
    int n;
    int stop_after;
} token_listing;

static int on_token(void *ctx, const cy_token *t)
{
    token_listing *l = ctx;
    assert_true(l->n < 16);
    l->t[l->n++] = *t;
    return l->n == l->stop_after ? 9 : 0;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_cy_registry_token_list(void **state)
{
    fixture *f = *state;
    token_listing l = {0};
    assert_int_equal(cy_registry_token_list(f->r, on_token, &l), 0);
    assert_int_equal(l.n, 0);

    int64_t before = wall_ms();
    made z = mk(f->r, "zeta", CY_SCOPE_ALL);
    made a = mk(f->r, "alpha", CY_SCOPE_READ_ONLY);
    made m = mk(f->r, "mid", CY_SCOPE_ALL);
    made b = mk(f->r, "beta", CY_SCOPE_READ_ONLY);
    assert_int_equal(cy_registry_token_revoke(f->r, m.id), 0);
    made last = mk(f->r, "zeta", CY_SCOPE_READ_ONLY);
    int64_t after = wall_ms();
    add(f->r, "a-device"); /* devices are not listed */

    assert_int_equal(cy_registry_token_list(f->r, on_token, &l), 0);
    assert_int_equal(l.n, 4);
    const made *want[] = {&z, &a, &b, &last};
    const char *names[] = {"zeta", "alpha", "beta", "zeta"};
    const int scopes[] = {CY_SCOPE_ALL, CY_SCOPE_READ_ONLY, CY_SCOPE_READ_ONLY, CY_SCOPE_READ_ONLY};
    for (int i = 0; i < 4; i++) {
        assert_string_equal(l.t[i].id, want[i]->id);
        assert_string_equal(l.t[i].name, names[i]);
        assert_int_equal(l.t[i].scopes, scopes[i]);
        assert_true(l.t[i].created_at >= before && l.t[i].created_at <= after);
        if (i) assert_true(l.t[i].created_at >= l.t[i - 1].created_at);
    }

    memset(&l, 0, sizeof(l));
    l.stop_after = 2;
    assert_int_equal(cy_registry_token_list(f->r, on_token, &l), 9);
    assert_int_equal(l.n, 2);
    assert_int_equal(cy_registry_token_list(f->r, NULL, NULL), CY_EINVAL);
}

/* ---- the first token ---- */

static char *slurp(const char *path, char *buf, size_t size)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    size_t n = fread(buf, 1, size - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    return buf;
}

/* The file holds exactly one valid full-scope token and a newline, mode 0600. */
static void assert_token_file(cy_registry *r, const char *path, char token[TOKEN_LEN + 1])
{
    char buf[256];
    assert_non_null(slurp(path, buf, sizeof(buf)));
    assert_int_equal(strlen(buf), TOKEN_LEN + 1);
    assert_int_equal(buf[TOKEN_LEN], '\n');
    buf[TOKEN_LEN] = '\0';
    assert_true(token_shaped(buf));
    int scope = -1;
    char id[CY_TOKEN_ID_LEN + 1];
    assert_int_equal(tcheck(r, buf, &scope, id), 0);
    assert_int_equal(scope, CY_SCOPE_ALL);
    struct stat sb;
    assert_int_equal(lstat(path, &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    assert_int_equal(sb.st_mode & 07777, 0600);
    if (token) strcpy(token, buf);
}

/* Nothing but the registry files and `keep` in the directory (no temporary
 * files left behind). */
static void assert_dir_clean(const char *dir, const char *keep)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || !strncmp(n, "registry.db", 11)) continue;
        if (keep && !strcmp(n, keep)) continue;
        fail_msg("unexpected file %s/%s", dir, n);
    }
    closedir(d);
}

static int count_tokens(cy_registry *r)
{
    token_listing l = {0};
    assert_int_equal(cy_registry_token_list(r, on_token, &l), 0);
    return l.n;
}

static void test_cy_registry_token_bootstrap_once(void **state)
{
    fixture *f = *state;
    char path[256], first[TOKEN_LEN + 1], again[TOKEN_LEN + 1];
    snprintf(path, sizeof(path), "%s/admin-token", f->dir);
    mode_t old = umask(0277); /* the mode must not depend on the umask */
    bool created = false;
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), 0);
    umask(old);
    assert_true(created);
    assert_token_file(f->r, path, first);
    assert_dir_clean(f->dir, "admin-token");
    token_listing l = {0};
    assert_int_equal(cy_registry_token_list(f->r, on_token, &l), 0);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.t[0].name, "admin");
    assert_int_equal(l.t[0].scopes, CY_SCOPE_ALL);
    assert_memory_equal(first + 4, l.t[0].id, CY_TOKEN_ID_LEN);

    /* Not again: the file and the registry stay as they are. */
    created = true;
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), 0);
    assert_false(created);
    assert_token_file(f->r, path, again);
    assert_string_equal(again, first);
    assert_int_equal(count_tokens(f->r), 1);
    /* Not from another handle either (another process in production). */
    cy_registry *other;
    assert_int_equal(cy_registry_open(f->path, &other), 0);
    assert_int_equal(cy_registry_token_bootstrap(other, path, &created), 0);
    assert_false(created);
    cy_registry_close(other);
    /* Nor when the file was deleted: the token still exists. */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), 0);
    assert_false(created);
    assert_int_equal(access(path, F_OK), -1);
}

static void test_cy_registry_token_bootstrap_existing_tokens(void **state)
{
    fixture *f = *state;
    char path[256];
    snprintf(path, sizeof(path), "%s/admin-token", f->dir);
    made a = mk(f->r, "mine", CY_SCOPE_READ_ONLY);
    bool created = true;
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), 0);
    assert_false(created);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(count_tokens(f->r), 1);
    /* Once they are all revoked, the next bootstrap makes a new first one. */
    assert_int_equal(cy_registry_token_revoke(f->r, a.id), 0);
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), 0);
    assert_true(created);
    assert_token_file(f->r, path, NULL);
}

/* A file left at the path (by a bootstrap whose commit was lost, or by hand)
 * is replaced whole, with mode 0600; a symlink there is replaced, never
 * followed. */
static void test_cy_registry_token_bootstrap_stale_file(void **state)
{
    fixture *f = *state;
    char path[256], target[256];
    snprintf(path, sizeof(path), "%s/admin-token", f->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("cyt_000000000000_00000000000000000000000000000000\nand a much longer tail\n", fp);
    fclose(fp);
    assert_int_equal(chmod(path, 0644), 0);
    bool created = false;
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), 0);
    assert_true(created);
    assert_token_file(f->r, path, NULL);
    assert_dir_clean(f->dir, "admin-token");

    /* Again with a symlink at the path, in a fresh registry. */
    cy_registry_close(f->r);
    f->r = NULL;
    assert_int_equal(unlink(f->path), 0);
    char wal[256];
    snprintf(wal, sizeof(wal), "%s-wal", f->path);
    unlink(wal);
    snprintf(wal, sizeof(wal), "%s-shm", f->path);
    unlink(wal);
    assert_int_equal(cy_registry_open(f->path, &f->r), 0);
    snprintf(target, sizeof(target), "%s/target", f->dir);
    fp = fopen(target, "w");
    assert_non_null(fp);
    fputs("keep me", fp);
    fclose(fp);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(symlink(target, path), 0);
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), 0);
    assert_true(created);
    assert_token_file(f->r, path, NULL); /* lstat: a regular file now */
    char buf[64];
    assert_string_equal(slurp(target, buf, sizeof(buf)), "keep me");
}

/* A file system error is returned as -errno, and the token is not created:
 * no token exists that nobody has. */
static void test_cy_registry_token_bootstrap_fs_error(void **state)
{
    fixture *f = *state;
    char path[256];
    snprintf(path, sizeof(path), "%s/missing/admin-token", f->dir);
    bool created = true;
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), -ENOENT);
    assert_false(created);
    assert_int_equal(count_tokens(f->r), 0);
    /* The path is a directory: rename fails after the temporary file was made. */
    snprintf(path, sizeof(path), "%s/adir", f->dir);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), -EISDIR);
    assert_false(created);
    assert_int_equal(count_tokens(f->r), 0);
    assert_int_equal(rmdir(path), 0);
    assert_dir_clean(f->dir, NULL);
    /* The registry is usable, outside any transaction, and the next try works. */
    made a = mk(f->r, "after", CY_SCOPE_ALL);
    assert_int_equal(cy_registry_token_revoke(f->r, a.id), 0);
    snprintf(path, sizeof(path), "%s/admin-token", f->dir);
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), 0);
    assert_true(created);
    assert_token_file(f->r, path, NULL);
}

static void test_cy_registry_token_bootstrap_alloc_fail(void **state)
{
    fixture *f = *state;
    char path[256];
    snprintf(path, sizeof(path), "%s/admin-token", f->dir);
    for (long n = 0;; n++) {
        bool created = true;
        cy_alloc_fail_after(n);
        int rc = cy_registry_token_bootstrap(f->r, path, &created);
        cy_alloc_fail_after(-1);
        if (rc == 0) {
            assert_true(created);
            break;
        }
        assert_int_equal(rc, CY_ENOMEM);
        assert_false(created);
        assert_int_equal(count_tokens(f->r), 0);
        assert_int_equal(access(path, F_OK), -1);
    }
    assert_token_file(f->r, path, NULL);
    assert_dir_clean(f->dir, "admin-token");
}

static void test_cy_registry_token_bootstrap_bad_args(void **state)
{
    fixture *f = *state;
    bool created = true;
    assert_int_equal(cy_registry_token_bootstrap(f->r, NULL, &created), CY_EINVAL);
    assert_false(created);
    created = true;
    assert_int_equal(cy_registry_token_bootstrap(f->r, "", &created), CY_EINVAL);
    assert_false(created);
    assert_int_equal(cy_registry_token_bootstrap(f->r, "x", NULL), CY_EINVAL);
    assert_int_equal(count_tokens(f->r), 0);
}

/* ---- schema migration ---- */

/* The exact version 1 schema, as cyan created it before tokens (copied from
 * registry.c). Do not edit: it is the input the migration must take. */
static const char schema_v1[] = "CREATE TABLE IF NOT EXISTS devices("
                                " id TEXT PRIMARY KEY NOT NULL,"
                                " name TEXT NOT NULL UNIQUE,"
                                " salt BLOB NOT NULL,"
                                " hash BLOB NOT NULL,"
                                " created_at INTEGER NOT NULL);"
                                "PRAGMA user_version = 1;";

/* A known device of the version 1 file: its secret, salt and id. */
#define V1_ID "0123456789abcdef01234567"
#define V1_SECRET "00112233445566778899aabbccddeeff"
static const uint8_t v1_salt[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

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

/* The CREATE statement SQLite keeps for table `name` (caller frees). */
static char *table_sql(const char *path, const char *name)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT sql FROM sqlite_schema WHERE name = ?1", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    char *s = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    assert_non_null(s);
    return s;
}

/* What a new or migrated file is: version 4 added the webhook tables
 * (webhooks, webhook_replays, meta; tested in test_store_hooks.c), version
 * 5 the column devices.psk. */
#define CURRENT_VERSION 6
#define CURRENT_TABLES 5

/* A version 1 registry with one device, in WAL mode as cyan left it. */
static void make_v1(const char *path)
{
    uint8_t hash[32];
    unsigned int len = 0;
    assert_non_null(HMAC(EVP_sha256(), v1_salt, 16, (const uint8_t *)V1_SECRET, 32, hash, &len));
    sql_exec(path, "PRAGMA journal_mode = WAL");
    sql_exec(path, schema_v1);
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "INSERT INTO devices VALUES(?1, 'old', ?2, ?3, 5)", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, V1_ID, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, v1_salt, 16, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, hash, 32, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void test_cy_registry_open_new_is_current(void **state)
{
    fixture *f = *state;
    assert_int_equal(sql_int(f->path, "PRAGMA user_version"), CURRENT_VERSION);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"),
                     CURRENT_TABLES);
}

static void test_cy_registry_open_migrates_v1(void **state)
{
    fixture *f = *state;
    char old[256];
    snprintf(old, sizeof(old), "%s/old.db", f->dir);
    make_v1(old);
    assert_int_equal(sql_int(old, "PRAGMA user_version"), 1);

    cy_registry *r = NULL;
    assert_int_equal(cy_registry_open(old, &r), 0);
    assert_int_equal(sql_int(old, "PRAGMA user_version"), CURRENT_VERSION);
    /* The device came through, as a user's. */
    assert_int_equal(check(r, V1_ID, V1_SECRET), 0);
    cy_device d;
    assert_int_equal(cy_registry_device_get(r, "old", &d), 0);
    assert_string_equal(d.id, V1_ID);
    assert_int_equal(d.created_at, 5);
    assert_false(d.internal);
    assert_int_equal(cy_registry_device_internal(r, V1_ID, CY_DEVICE_ID_LEN), 0);
    /* Tokens start empty, and work. */
    assert_int_equal(count_tokens(r), 0);
    char path[256];
    snprintf(path, sizeof(path), "%s/admin-token", f->dir);
    bool created = false;
    assert_int_equal(cy_registry_token_bootstrap(r, path, &created), 0);
    assert_true(created);
    assert_token_file(r, path, NULL);
    made a = mk(r, "ci", CY_SCOPE_READ_ONLY);
    cy_registry_close(r);

    /* Reopening migrates nothing more and keeps everything. */
    assert_int_equal(cy_registry_open(old, &r), 0);
    assert_int_equal(sql_int(old, "PRAGMA user_version"), CURRENT_VERSION);
    int scope;
    assert_int_equal(tcheck(r, a.token, &scope, NULL), 0);
    assert_int_equal(scope, CY_SCOPE_READ_ONLY);
    assert_int_equal(count_tokens(r), 2);
    assert_int_equal(check(r, V1_ID, V1_SECRET), 0);
    cy_registry_close(r);
    /* The migrated file is a new one, table for table. */
    const char *tables[] = {"devices", "tokens"};
    for (int i = 0; i < 2; i++) {
        char *got = table_sql(old, tables[i]), *want = table_sql(f->path, tables[i]);
        assert_string_equal(got, want);
        free(got);
        free(want);
    }
    assert_int_equal(sql_int(old, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"),
                     CURRENT_TABLES);
}

/* A migration that fails leaves the file exactly at version 1: an index
 * named "tokens" makes the CREATE TABLE fail. */
static void test_cy_registry_open_migration_atomic(void **state)
{
    fixture *f = *state;
    char old[256];
    snprintf(old, sizeof(old), "%s/old.db", f->dir);
    make_v1(old);
    sql_exec(old, "CREATE INDEX tokens ON devices(created_at)");
    cy_registry *r = (cy_registry *)1;
    assert_int_equal(cy_registry_open(old, &r), CY_ESTORE);
    assert_null(r);
    assert_int_equal(sql_int(old, "PRAGMA user_version"), 1);
    assert_int_equal(sql_int(old, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"), 1);

    sql_exec(old, "DROP INDEX tokens");
    assert_int_equal(cy_registry_open(old, &r), 0);
    assert_int_equal(check(r, V1_ID, V1_SECRET), 0);
    mk(r, "ci", CY_SCOPE_ALL);
    cy_registry_close(r);
    assert_int_equal(sql_int(old, "PRAGMA user_version"), CURRENT_VERSION);
}

/* The exact version 2 schema (copied from registry.c before internal
 * devices). Do not edit: it is the input the migration must take. */
static const char schema_v2[] = "CREATE TABLE IF NOT EXISTS devices("
                                " id TEXT PRIMARY KEY NOT NULL,"
                                " name TEXT NOT NULL UNIQUE,"
                                " salt BLOB NOT NULL,"
                                " hash BLOB NOT NULL,"
                                " created_at INTEGER NOT NULL);"
                                "CREATE TABLE IF NOT EXISTS tokens("
                                " id TEXT PRIMARY KEY NOT NULL,"
                                " name TEXT NOT NULL,"
                                " scope INTEGER NOT NULL,"
                                " salt BLOB NOT NULL,"
                                " hash BLOB NOT NULL,"
                                " created_at INTEGER NOT NULL);"
                                "PRAGMA user_version = 2;";

/* A version 2 registry (devices and a token) becomes version 3: its devices
 * are users', its token keeps working, and the file is a new one's, table
 * for table. */
static void test_cy_registry_open_migrates_v2(void **state)
{
    fixture *f = *state;
    char old[256];
    snprintf(old, sizeof(old), "%s/v2.db", f->dir);
    uint8_t hash[32];
    unsigned int len = 0;
    assert_non_null(HMAC(EVP_sha256(), v1_salt, 16, (const uint8_t *)V1_SECRET, 32, hash, &len));
    sql_exec(old, "PRAGMA journal_mode = WAL");
    sql_exec(old, schema_v2);
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(old, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "INSERT INTO devices VALUES(?1, 'old', ?2, ?3, 5);", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, V1_ID, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, v1_salt, 16, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, hash, 32, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    /* A full token "cyt_00112233aabb_<V1_SECRET>" with the same salt. */
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "INSERT INTO tokens VALUES('00112233aabb', 'ci', 2, ?1,"
                                        " ?2, 6);",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_blob(st, 1, v1_salt, 16, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, hash, 32, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);

    cy_registry *r = NULL;
    assert_int_equal(cy_registry_open(old, &r), 0);
    assert_int_equal(sql_int(old, "PRAGMA user_version"), CURRENT_VERSION);
    assert_int_equal(check(r, V1_ID, V1_SECRET), 0);
    cy_device d;
    assert_int_equal(cy_registry_device_get(r, "old", &d), 0);
    assert_false(d.internal);
    assert_int_equal(cy_registry_internal_get(r, V1_ID, &d), CY_ENOENT);
    assert_int_equal(cy_registry_device_internal(r, V1_ID, CY_DEVICE_ID_LEN), 0);
    int scope = 0;
    assert_int_equal(tcheck(r, "cyt_00112233aabb_" V1_SECRET, &scope, NULL), 0);
    assert_int_equal(scope, CY_SCOPE_ALL);
    /* Internal devices work in it. */
    char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1];
    assert_int_equal(cy_registry_internal_device(r, "cyan:test", NULL, NULL, id, secret, NULL), 0);
    assert_int_equal(check(r, id, secret), 0);
    cy_registry_close(r);
    const char *tables[] = {"devices", "tokens"};
    for (int i = 0; i < 2; i++) {
        char *got = table_sql(old, tables[i]), *want = table_sql(f->path, tables[i]);
        assert_string_equal(got, want);
        free(got);
        free(want);
    }
}

/* With shared reads, checks see one snapshot until cy_registry_end_reads;
 * another process's additions and removals show from the next one, and the
 * handle's own writes commit at once. */
static void test_cy_registry_share_reads_snapshot(void **state)
{
    fixture *f = *state;
    cy_registry *cli; /* the admin command, another process in production */
    assert_int_equal(cy_registry_open(f->path, &cli), 0);
    cy_registry_share_reads(f->r, true);

    added a = add(cli, "a");
    assert_int_equal(check(f->r, a.id, a.secret), 0); /* begins the snapshot */
    added b = add(cli, "b");
    assert_int_equal(check(f->r, b.id, b.secret), CY_ENOENT);
    assert_int_equal(cy_registry_device_remove(cli, "a"), 0);
    assert_int_equal(check(f->r, a.id, a.secret), 0);
    assert_int_equal(check(f->r, a.id, b.secret), CY_EACCES);
    cy_registry_end_reads(f->r);
    assert_int_equal(check(f->r, b.id, b.secret), 0);
    past_recheck(); /* a was cached: its removal shows at the recheck */
    assert_int_equal(check(f->r, a.id, a.secret), CY_ENOENT);
    cy_registry_end_reads(f->r);
    cy_registry_end_reads(f->r); /* nothing open: a no-op */

    /* A write through the sharing handle ends the snapshot and commits. */
    assert_int_equal(check(f->r, b.id, b.secret), 0);
    added c = add(f->r, "c");
    assert_int_equal(check(cli, c.id, c.secret), 0);
    assert_int_equal(cy_registry_device_remove(f->r, "b"), 0);
    assert_int_equal(check(cli, b.id, b.secret), CY_ENOENT);

    /* Off: every check reads afresh. */
    assert_int_equal(check(f->r, c.id, c.secret), 0);
    cy_registry_share_reads(f->r, false);
    assert_int_equal(cy_registry_device_remove(cli, "c"), 0);
    past_recheck();
    assert_int_equal(check(f->r, c.id, c.secret), CY_ENOENT);
    added d = add(cli, "d");
    assert_int_equal(check(f->r, d.id, d.secret), 0);

    cy_registry_share_reads(NULL, true);
    cy_registry_end_reads(NULL);
    /* Closing with a snapshot open ends it. */
    cy_registry_share_reads(cli, true);
    assert_int_equal(check(cli, d.id, d.secret), 0);
    cy_registry_close(cli);
}

/* ---- the cache and other processes' locks ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Another process's connection to path, holding what sql takes. */
static sqlite3 *hold(const char *path, const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) fail_msg("%s: %s", sql, err);
    return db;
}

/* A device checked once is checked again from the cache, without reading
 * the file: removed by another process just now, it still passes (with
 * its right secret only) until the recheck, 200 ms later, sees the file
 * moved. (On a machine so slow that the recheck came due in between,
 * the first half proves nothing and is skipped.) */
static void test_cy_registry_cache_hit(void **state)
{
    fixture *f = *state;
    cy_registry *cli;
    assert_int_equal(cy_registry_open(f->path, &cli), 0);
    added a = add(cli, "a"), b = add(cli, "b");
    cy_registry_share_reads(f->r, true);
    int64_t t0 = now_ms();
    assert_int_equal(check(f->r, a.id, a.secret), 0); /* now cached */
    cy_registry_end_reads(f->r);
    assert_int_equal(cy_registry_device_remove(cli, a.id), 0);
    int hit = check(f->r, a.id, a.secret), wrong = check(f->r, a.id, b.secret);
    bool in_time = now_ms() - t0 < 150;
    past_recheck();
    assert_int_equal(check(f->r, a.id, a.secret), CY_ENOENT);
    assert_int_equal(check(f->r, b.id, b.secret), 0);
    cy_registry_close(cli);
    if (!in_time) skip();
    assert_int_equal(hit, 0);
    assert_int_equal(wrong, CY_EACCES);
}

/* A write waits at most the handle's busy timeout for another process's
 * write lock, then CY_ESTORE, and the next writes fail at once for a
 * while; reads go on meanwhile (WAL readers do not wait for a writer). */
static void test_cy_registry_write_lock_fails_fast(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "a");
    cy_registry_share_reads(f->r, true); /* a loop: 500 ms unless told */
    sqlite3 *x = hold(f->path, "BEGIN IMMEDIATE; DELETE FROM devices");
    char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1];
    int64_t t0 = now_ms();
    assert_int_equal(cy_registry_device_add(f->r, "new", id, secret, NULL), CY_ESTORE);
    int64_t waited = now_ms() - t0;
    assert_true(waited >= CY_REGISTRY_LOOP_BUSY_MS / 2 && waited < 2000);
    t0 = now_ms();
    assert_int_equal(cy_registry_device_remove(f->r, "a"), CY_ESTORE);
    char tid[CY_TOKEN_ID_LEN + 1], tok[CY_TOKEN_MAX + 1];
    assert_int_equal(cy_registry_token_create(f->r, "t", CY_SCOPE_ALL, 0, tid, tok), CY_ESTORE);
    assert_true(now_ms() - t0 < 40);
    /* Reads are not held up (uncached: the file is read). */
    cy_device d;
    assert_int_equal(cy_registry_device_get(f->r, "a", &d), 0);
    assert_int_equal(check(f->r, a.id, a.secret), 0);
    sqlite3_exec(x, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(x);
    past_recheck(); /* the writes' pause is over */
    assert_int_equal(cy_registry_device_add(f->r, "new", id, secret, NULL), 0);
    assert_int_equal(check(f->r, id, secret), 0);
}

/* What another process revokes or removes is refused from the next
 * recheck (data_version moved); what this handle removes, at once. A
 * device unknown at first is found once it is added (nothing negative is
 * kept). */
static void test_cy_registry_cache_invalidation(void **state)
{
    fixture *f = *state;
    cy_registry *cli;
    assert_int_equal(cy_registry_open(f->path, &cli), 0);
    cy_registry_share_reads(f->r, true);
    made t = mk(cli, "t", CY_SCOPE_ALL);
    added a = add(cli, "a"), b = add(cli, "b");
    int scope;
    assert_int_equal(tcheck(f->r, t.token, &scope, NULL), 0);
    assert_int_equal(cy_registry_token_exists(f->r, t.id), 1);
    assert_int_equal(check(f->r, a.id, a.secret), 0);
    assert_int_equal(check(f->r, b.id, b.secret), 0);
    cy_registry_end_reads(f->r);

    assert_int_equal(cy_registry_token_revoke(cli, t.id), 0);
    assert_int_equal(cy_registry_device_remove(cli, a.id), 0);
    past_recheck();
    assert_int_equal(tcheck(f->r, t.token, &scope, NULL), CY_EACCES);
    assert_int_equal(cy_registry_token_exists(f->r, t.id), 0);
    assert_int_equal(check(f->r, a.id, a.secret), CY_ENOENT);
    assert_int_equal(check(f->r, b.id, b.secret), 0);
    cy_registry_end_reads(f->r);

    /* Removed through the handle itself: refused at once. */
    assert_int_equal(cy_registry_device_remove(f->r, b.id), 0);
    assert_int_equal(check(f->r, b.id, b.secret), CY_ENOENT);

    /* Unknown, then added by another process: found. */
    char id[CY_DEVICE_ID_LEN + 1];
    memcpy(id, "000000000000000000000000", CY_DEVICE_ID_LEN + 1);
    assert_int_equal(check(f->r, id, "00000000000000000000000000000000"), CY_ENOENT);
    cy_registry_end_reads(f->r);
    added c = add(cli, "c");
    assert_int_equal(check(f->r, c.id, c.secret), 0);
    cy_registry_close(cli);
}

/* cy_registry_fresh (a shard's API, before each batch of requests): what
 * another process committed before it is seen by the lookups after it, at
 * once (no recheck delay): a revoked token, a removed or renamed device.
 * Gets with shared reads on are cached, and the cache goes with the
 * snapshot's change; writes after a get still commit at once. */
static void test_cy_registry_fresh(void **state)
{
    fixture *f = *state;
    cy_registry *cli;
    assert_int_equal(cy_registry_open(f->path, &cli), 0);
    cy_registry_share_reads(f->r, true);
    made t = mk(cli, "t", CY_SCOPE_ALL);
    added a = add(cli, "a"), b = add(cli, "b");
    int scope;
    cy_device d;
    cy_registry_fresh(f->r);
    assert_int_equal(tcheck(f->r, t.token, &scope, NULL), 0);
    assert_int_equal(cy_registry_device_get(f->r, a.id, &d), 0);
    assert_int_equal(cy_registry_device_get(f->r, "b", &d), 0);
    assert_string_equal(d.id, b.id);
    /* Cached: found again in the same snapshot, and in the next one while
     * nothing changed. */
    assert_int_equal(cy_registry_device_get(f->r, a.id, &d), 0);
    cy_registry_fresh(f->r);
    assert_int_equal(cy_registry_device_get(f->r, a.id, &d), 0);
    assert_string_equal(d.name, "a");

    /* Another process revokes, removes, renames: refused at the next
     * fresh snapshot, with no wait (the recheck is 200 ms away). */
    assert_int_equal(tcheck(f->r, t.token, &scope, NULL), 0); /* cached just now */
    assert_int_equal(cy_registry_token_revoke(cli, t.id), 0);
    cy_registry_fresh(f->r);
    assert_int_equal(tcheck(f->r, t.token, &scope, NULL), CY_EACCES);
    assert_int_equal(cy_registry_device_remove(cli, a.id), 0);
    assert_int_equal(cy_registry_device_rename(cli, "b", "b2", NULL), 0);
    cy_registry_fresh(f->r);
    assert_int_equal(cy_registry_device_get(f->r, a.id, &d), CY_ENOENT);
    assert_int_equal(cy_registry_device_get(f->r, "b", &d), CY_ENOENT);
    assert_int_equal(cy_registry_device_get(f->r, "b2", &d), 0);
    assert_string_equal(d.id, b.id);

    /* A rename and a new PSK through the shard's handle, right after gets
     * in its snapshot: committed at once (another handle sees them), and
     * the handle's own cache forgets the old name. */
    assert_int_equal(cy_registry_device_rename(f->r, b.id, "b3", NULL), 0);
    assert_int_equal(cy_registry_device_get(cli, "b3", &d), 0);
    assert_int_equal(cy_registry_device_get(f->r, "b2", &d), CY_ENOENT);
    assert_int_equal(cy_registry_device_get(f->r, "b3", &d), 0);
    char psk[CY_DEVICE_PSK_LEN + 1];
    uint8_t k1[CY_DEVICE_PSK_LEN], k2[CY_DEVICE_PSK_LEN];
    assert_int_equal(cy_registry_device_psk(cli, b.id, CY_DEVICE_ID_LEN, k1, sizeof(k1)),
                     CY_DEVICE_PSK_LEN);
    assert_int_equal(cy_registry_device_get(f->r, "b3", &d), 0);
    assert_int_equal(cy_registry_device_psk_new(f->r, "b3", psk), 0);
    assert_int_equal(cy_registry_device_psk(cli, b.id, CY_DEVICE_ID_LEN, k2, sizeof(k2)),
                     CY_DEVICE_PSK_LEN);
    assert_memory_equal(k2, psk, CY_DEVICE_PSK_LEN);
    assert_memory_not_equal(k1, k2, CY_DEVICE_PSK_LEN);

    /* A handle without shared reads reads the file's latest every time. */
    assert_int_equal(cy_registry_device_get(cli, b.id, &d), 0);
    assert_int_equal(cy_registry_device_remove(f->r, b.id), 0);
    assert_int_equal(cy_registry_device_get(cli, b.id, &d), CY_ENOENT);
    assert_int_equal(cy_registry_device_get(f->r, b.id, &d), CY_ENOENT);
    cy_registry_fresh(NULL);
    cy_registry_end_reads(f->r);
    cy_registry_close(cli);
}

/* ---- internal devices and tokens ---- */

/* id_ok: ids whose last hex digit is ctx's (a stand-in for "hashes to
 * shard i"); counts its calls. */
typedef struct last_digit {
    char want;
    int calls;
} last_digit;

static bool ends_with(void *ctx, const char *id)
{
    last_digit *l = ctx;
    l->calls++;
    assert_int_equal(strlen(id), CY_DEVICE_ID_LEN);
    return id[CY_DEVICE_ID_LEN - 1] == l->want;
}

static bool never(void *ctx, const char *id)
{
    (void)ctx;
    (void)id;
    return false;
}

static int count_devices(cy_registry *r)
{
    listing l = {0};
    assert_int_equal(cy_registry_device_list(r, on_device, &l), 0);
    return l.n;
}

static void test_cy_registry_internal_device_ensure(void **state)
{
    fixture *f = *state;
    added user = add(f->r, "lamp");
    char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1];
    last_digit ld = {'7', 0};
    assert_int_equal(
        cy_registry_internal_device(f->r, "cyan:canary:1", ends_with, &ld, id, secret, NULL), 0);
    assert_true(lower_hex(id, CY_DEVICE_ID_LEN));
    assert_true(lower_hex(secret, CY_DEVICE_SECRET_LEN));
    assert_int_equal(id[CY_DEVICE_ID_LEN - 1], '7');
    assert_true(ld.calls >= 1);
    /* It connects like any device... */
    assert_int_equal(check(f->r, id, secret), 0);
    /* ...and is nobody's to see, count or delete. */
    cy_device d;
    assert_int_equal(cy_registry_device_get(f->r, id, &d), CY_ENOENT);
    assert_int_equal(cy_registry_device_get(f->r, "cyan:canary:1", &d), CY_ENOENT);
    assert_int_equal(cy_registry_device_remove(f->r, id), CY_ENOENT);
    assert_int_equal(cy_registry_device_remove(f->r, "cyan:canary:1"), CY_ENOENT);
    assert_int_equal(count_devices(f->r), 1);
    assert_int_equal(check(f->r, id, secret), 0);
    /* Found as what it is. */
    memset(&d, 0, sizeof(d));
    assert_int_equal(cy_registry_internal_get(f->r, id, &d), 0);
    assert_string_equal(d.id, id);
    assert_string_equal(d.name, "cyan:canary:1");
    assert_true(d.internal);
    assert_true(d.created_at > 1600000000000);
    assert_int_equal(cy_registry_internal_get(f->r, user.id, &d), CY_ENOENT);
    assert_int_equal(cy_registry_internal_get(f->r, "cyan:canary:1", &d),
                     CY_ENOENT); /* by id only */
    assert_int_equal(cy_registry_device_get(f->r, user.id, &d), 0);
    assert_false(d.internal);
    assert_int_equal(cy_registry_device_internal(f->r, id, CY_DEVICE_ID_LEN), 1);
    assert_int_equal(cy_registry_device_internal(f->r, user.id, CY_DEVICE_ID_LEN), 0);
    assert_int_equal(cy_registry_device_internal(f->r, "0123456789abcdef01234567", 24), 0);
    assert_int_equal(cy_registry_device_internal(f->r, id, 23), 0);
    assert_int_equal(cy_registry_device_internal(f->r, "not-an-id-but-24-chars!!", 24), 0);
    assert_int_equal(cy_registry_device_internal(f->r, NULL, 0), 0);
    assert_int_equal(cy_registry_device_internal(f->r, NULL, 24), CY_EINVAL);
    assert_int_equal(cy_registry_device_internal(NULL, id, 24), CY_EINVAL);

    /* Again: the same device, a new secret; the old one stops working. */
    char id2[CY_DEVICE_ID_LEN + 1], secret2[CY_DEVICE_SECRET_LEN + 1];
    assert_int_equal(
        cy_registry_internal_device(f->r, "cyan:canary:1", ends_with, &ld, id2, secret2, NULL), 0);
    assert_string_equal(id2, id);
    assert_string_not_equal(secret2, secret);
    assert_int_equal(check(f->r, id, secret2), 0);
    assert_int_equal(check(f->r, id, secret), CY_EACCES);
    assert_int_equal(count_devices(f->r), 1);

    /* Another predicate (the shard count changed): a new device replaces it. */
    last_digit other = {'a', 0};
    char id3[CY_DEVICE_ID_LEN + 1], secret3[CY_DEVICE_SECRET_LEN + 1];
    assert_int_equal(
        cy_registry_internal_device(f->r, "cyan:canary:1", ends_with, &other, id3, secret3, NULL),
        0);
    assert_int_equal(id3[CY_DEVICE_ID_LEN - 1], 'a');
    assert_int_equal(check(f->r, id3, secret3), 0);
    assert_int_equal(check(f->r, id, secret2), CY_ENOENT);
    assert_int_equal(cy_registry_internal_get(f->r, id, &d), CY_ENOENT);
    /* A second name is a second device. */
    char id4[CY_DEVICE_ID_LEN + 1], secret4[CY_DEVICE_SECRET_LEN + 1];
    assert_int_equal(
        cy_registry_internal_device(f->r, "cyan:probe:1", NULL, NULL, id4, secret4, NULL), 0);
    assert_string_not_equal(id4, id3);
    assert_int_equal(check(f->r, id3, secret3), 0);
    assert_int_equal(check(f->r, id4, secret4), 0);
    assert_int_equal(count_devices(f->r), 1);
    /* A user's name stays free for users. */
    add(f->r, "canary-1");
    assert_int_equal(count_devices(f->r), 2);
}

static void test_cy_registry_internal_device_errors(void **state)
{
    fixture *f = *state;
    char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1];
    const char *bad[] = {"canary", "", "cyan canary:1", "cyan:canary/1",
                         "cyan:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        strcpy(id, "x");
        strcpy(secret, "x");
        assert_int_equal(cy_registry_internal_device(f->r, bad[i], NULL, NULL, id, secret, NULL),
                         CY_EINVAL);
        assert_string_equal(id, "");
        assert_string_equal(secret, "");
    }
    /* 64 characters is the longest name. */
    char longest[CY_DEVICE_NAME_MAX + 1];
    memset(longest, 'a', CY_DEVICE_NAME_MAX);
    longest[0] = ':';
    longest[CY_DEVICE_NAME_MAX] = '\0';
    assert_int_equal(cy_registry_internal_device(f->r, longest, NULL, NULL, id, secret, NULL), 0);
    assert_int_equal(cy_registry_internal_device(NULL, "a:b", NULL, NULL, id, secret, NULL),
                     CY_EINVAL);
    assert_int_equal(cy_registry_internal_device(f->r, NULL, NULL, NULL, id, secret, NULL),
                     CY_EINVAL);
    assert_int_equal(cy_registry_internal_device(f->r, "a:b", NULL, NULL, NULL, secret, NULL),
                     CY_EINVAL);
    assert_int_equal(cy_registry_internal_device(f->r, "a:b", NULL, NULL, id, NULL, NULL),
                     CY_EINVAL);

    /* A predicate that takes nothing: CY_ERANGE, and nothing changed. */
    char kept[CY_DEVICE_ID_LEN + 1], ksecret[CY_DEVICE_SECRET_LEN + 1];
    assert_int_equal(cy_registry_internal_device(f->r, "a:b", NULL, NULL, kept, ksecret, NULL), 0);
    assert_int_equal(cy_registry_internal_device(f->r, "a:b", never, NULL, id, secret, NULL),
                     CY_ERANGE);
    assert_string_equal(id, "");
    assert_int_equal(check(f->r, kept, ksecret), 0);
    cy_device d;
    assert_int_equal(cy_registry_internal_get(f->r, kept, &d), 0);
    assert_int_equal(cy_registry_internal_device(f->r, "c:d", never, NULL, id, secret, NULL),
                     CY_ERANGE);
    assert_int_equal(cy_registry_internal_get(f->r, kept, &d), 0);
    assert_int_equal(cy_registry_internal_get(f->r, NULL, &d), CY_EINVAL);
    assert_int_equal(cy_registry_internal_get(f->r, kept, NULL), CY_EINVAL);
}

/* Another process (the monitor) rotates a canary's secret: a shard's
 * handle that cached the old row takes the new one by the recheck, and
 * tells the device is internal from its cache. */
static void test_cy_registry_internal_device_other_process(void **state)
{
    fixture *f = *state;
    cy_registry *mon;
    assert_int_equal(cy_registry_open(f->path, &mon), 0);
    char id[CY_DEVICE_ID_LEN + 1], s1[CY_DEVICE_SECRET_LEN + 1], s2[CY_DEVICE_SECRET_LEN + 1];
    assert_int_equal(cy_registry_internal_device(mon, "cyan:canary:0", NULL, NULL, id, s1, NULL),
                     0);
    assert_int_equal(check(f->r, id, s1), 0); /* cached in the shard's handle */
    assert_int_equal(cy_registry_device_internal(f->r, id, CY_DEVICE_ID_LEN), 1);
    assert_int_equal(cy_registry_internal_device(mon, "cyan:canary:0", NULL, NULL, id, s2, NULL),
                     0);
    past_recheck();
    assert_int_equal(check(f->r, id, s2), 0);
    assert_int_equal(check(f->r, id, s1), CY_EACCES);
    assert_int_equal(cy_registry_device_internal(f->r, id, CY_DEVICE_ID_LEN), 1);
    cy_registry_close(mon);
}

static void test_cy_registry_internal_token(void **state)
{
    fixture *f = *state;
    made user = mk(f->r, "ci", CY_SCOPE_ALL);
    made t1, t2;
    assert_int_equal(cy_registry_internal_token(f->r, "cyan:monitor", t1.id, t1.token), 0);
    assert_true(token_shaped(t1.token));
    int scope = 0;
    char id[CY_TOKEN_ID_LEN + 1];
    assert_int_equal(tcheck(f->r, t1.token, &scope, id), 0);
    assert_int_equal(scope, CY_SCOPE_INTERNAL);
    assert_string_equal(id, t1.id);
    /* Listed, with its scope. */
    token_listing l = {0};
    assert_int_equal(cy_registry_token_list(f->r, on_token, &l), 0);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.t[1].id, t1.id);
    assert_string_equal(l.t[1].name, "cyan:monitor");
    assert_int_equal(l.t[1].scopes, CY_SCOPE_INTERNAL);
    /* Replaced: a new id; the old token is gone, the user's untouched. */
    assert_int_equal(cy_registry_internal_token(f->r, "cyan:monitor", t2.id, t2.token), 0);
    assert_string_not_equal(t2.id, t1.id);
    assert_int_equal(tcheck(f->r, t1.token, &scope, NULL), CY_EACCES);
    assert_int_equal(tcheck(f->r, t2.token, &scope, NULL), 0);
    assert_int_equal(scope, CY_SCOPE_INTERNAL);
    assert_int_equal(tcheck(f->r, user.token, &scope, NULL), 0);
    assert_int_equal(count_tokens(f->r), 2);
    /* Another name is another token. */
    made t3;
    assert_int_equal(cy_registry_internal_token(f->r, "cyan:probe", t3.id, t3.token), 0);
    assert_int_equal(tcheck(f->r, t2.token, &scope, NULL), 0);
    assert_int_equal(count_tokens(f->r), 3);
    /* Revocable like any token. */
    assert_int_equal(cy_registry_token_revoke(f->r, t3.id), 0);
    assert_int_equal(tcheck(f->r, t3.token, &scope, NULL), CY_EACCES);
    /* Users cannot make one; internal names are the internal calls'. */
    made u;
    assert_int_equal(cy_registry_token_create(f->r, "x", CY_SCOPE_INTERNAL, 0, u.id, u.token),
                     CY_EINVAL);
    assert_int_equal(cy_registry_token_create(f->r, "a:b", CY_SCOPE_ALL, 0, u.id, u.token),
                     CY_EINVAL);
    strcpy(u.id, "x");
    assert_int_equal(cy_registry_internal_token(f->r, "monitor", u.id, u.token), CY_EINVAL);
    assert_string_equal(u.id, "");
    assert_int_equal(cy_registry_internal_token(f->r, NULL, u.id, u.token), CY_EINVAL);
    assert_int_equal(cy_registry_internal_token(f->r, "a:b", NULL, u.token), CY_EINVAL);
}

/* The first token is made while no user token exists, whatever internal
 * tokens there are: they administer nothing. */
static void test_cy_registry_token_bootstrap_ignores_internal(void **state)
{
    fixture *f = *state;
    made t;
    assert_int_equal(cy_registry_internal_token(f->r, "cyan:monitor", t.id, t.token), 0);
    char path[256];
    snprintf(path, sizeof(path), "%s/admin-token", f->dir);
    bool created = false;
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), 0);
    assert_true(created);
    assert_token_file(f->r, path, NULL);
    assert_int_equal(cy_registry_token_bootstrap(f->r, path, &created), 0);
    assert_false(created);
    assert_int_equal(count_tokens(f->r), 2);
}

/* ---- DTLS PSKs ---- */

/* The PSK of id through handle r as text, or "" with *rc the error. */
static int psk_of(cy_registry *r, const char *id, char out[CY_DEVICE_PSK_LEN + 1])
{
    uint8_t key[CY_DEVICE_PSK_LEN + 8];
    memset(key, 0x5a, sizeof(key));
    int rc = cy_registry_device_psk(r, id, strlen(id), key, sizeof(key));
    out[0] = '\0';
    if (rc == CY_DEVICE_PSK_LEN) {
        memcpy(out, key, CY_DEVICE_PSK_LEN);
        out[CY_DEVICE_PSK_LEN] = '\0';
        assert_int_equal(key[CY_DEVICE_PSK_LEN], 0x5a); /* nothing written past it */
    }
    return rc;
}

/* Whether the file at path holds the bytes text[0..n) anywhere (a missing
 * file holds nothing). */
static bool file_holds(const char *path, const char *text, size_t n)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return false;
    static char buf[1 << 20];
    size_t got = fread(buf, 1, sizeof(buf), fp);
    fclose(fp);
    for (size_t k = 0; k + n <= got; k++)
        if (memcmp(buf + k, text, n) == 0) return true;
    return false;
}

static void key_path(const fixture *f, char *p, size_t len)
{
    snprintf(p, len, "%s/registry.key", f->dir);
}

static void test_cy_registry_device_psk_issued(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "a"), b = add(f->r, "b");
    assert_true(lower_hex(a.psk, CY_DEVICE_PSK_LEN));
    assert_true(lower_hex(b.psk, CY_DEVICE_PSK_LEN));
    assert_string_not_equal(a.psk, b.psk);
    assert_string_not_equal(a.psk, a.secret);
    char got[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(psk_of(f->r, a.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, a.psk);
    assert_int_equal(psk_of(f->r, b.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, b.psk);
    /* The id need not be NUL-terminated. */
    char idbuf[CY_DEVICE_ID_LEN + 4];
    memcpy(idbuf, a.id, CY_DEVICE_ID_LEN);
    memcpy(idbuf + CY_DEVICE_ID_LEN, "zzz", 4);
    uint8_t key[CY_DEVICE_PSK_LEN];
    assert_int_equal(cy_registry_device_psk(f->r, idbuf, CY_DEVICE_ID_LEN, key, sizeof(key)),
                     CY_DEVICE_PSK_LEN);
    assert_memory_equal(key, a.psk, CY_DEVICE_PSK_LEN);

    /* A caller that does not want to see it still gets a device with a PSK. */
    char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1];
    assert_int_equal(cy_registry_device_add(f->r, "c", id, secret, NULL), 0);
    assert_int_equal(psk_of(f->r, id, got), CY_DEVICE_PSK_LEN);
    assert_true(lower_hex(got, CY_DEVICE_PSK_LEN));
    /* A failed add shows no PSK. */
    char psk[CY_DEVICE_PSK_LEN + 1] = "x";
    assert_int_equal(cy_registry_device_add(f->r, "a", id, secret, psk), CY_EEXIST);
    assert_string_equal(psk, "");
    strcpy(psk, "x");
    assert_int_equal(cy_registry_device_add(f->r, "bad name", id, secret, psk), CY_EINVAL);
    assert_string_equal(psk, "");

    /* Internal devices have one too. */
    char iid[CY_DEVICE_ID_LEN + 1], isecret[CY_DEVICE_SECRET_LEN + 1], ipsk[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(
        cy_registry_internal_device(f->r, "cyan:canary:0", NULL, NULL, iid, isecret, ipsk), 0);
    assert_true(lower_hex(ipsk, CY_DEVICE_PSK_LEN));
    assert_int_equal(psk_of(f->r, iid, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, ipsk);
    /* Ensured again: a new PSK with the new secret. */
    char ipsk2[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(
        cy_registry_internal_device(f->r, "cyan:canary:0", NULL, NULL, iid, isecret, ipsk2), 0);
    assert_string_not_equal(ipsk2, ipsk);
    assert_int_equal(psk_of(f->r, iid, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, ipsk2);
    /* A new internal device discarding it (NULL) still has one. */
    assert_int_equal(
        cy_registry_internal_device(f->r, "cyan:probe:0", NULL, NULL, iid, isecret, NULL), 0);
    assert_int_equal(psk_of(f->r, iid, got), CY_DEVICE_PSK_LEN);

    /* Another handle (a shard) reads them with the same key file. */
    cy_registry *shard;
    assert_int_equal(cy_registry_open(f->path, &shard), 0);
    cy_registry_share_reads(shard, true);
    assert_int_equal(psk_of(shard, a.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, a.psk);
    cy_registry_end_reads(shard);
    cy_registry_close(shard);
}

static void test_cy_registry_device_psk_errors(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "a");
    uint8_t key[CY_DEVICE_PSK_LEN];
    char got[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(psk_of(f->r, "000000000000000000000000", got), CY_ENOENT);
    assert_int_equal(psk_of(f->r, "a", got), CY_ENOENT); /* a name is not an id */
    assert_int_equal(psk_of(f->r, "", got), CY_ENOENT);
    char upper[CY_DEVICE_ID_LEN + 1];
    strcpy(upper, a.id);
    for (char *p = upper; *p; p++)
        if (*p >= 'a' && *p <= 'f') *p = (char)(*p - 32);
    if (strcmp(upper, a.id)) assert_int_equal(psk_of(f->r, upper, got), CY_ENOENT);
    assert_int_equal(cy_registry_device_psk(f->r, a.id, CY_DEVICE_ID_LEN - 1, key, sizeof(key)),
                     CY_ENOENT);
    assert_int_equal(cy_registry_device_psk(f->r, NULL, 0, key, sizeof(key)), CY_ENOENT);
    assert_int_equal(cy_registry_device_psk(f->r, NULL, 24, key, sizeof(key)), CY_EINVAL);
    assert_int_equal(cy_registry_device_psk(f->r, a.id, 24, NULL, 32), CY_EINVAL);
    assert_int_equal(cy_registry_device_psk(NULL, a.id, 24, key, sizeof(key)), CY_EINVAL);
    assert_int_equal(cy_registry_device_psk(f->r, a.id, 24, key, CY_DEVICE_PSK_LEN - 1), CY_ERANGE);
    /* Removed: gone. */
    assert_int_equal(cy_registry_device_remove(f->r, "a"), 0);
    assert_int_equal(psk_of(f->r, a.id, got), CY_ENOENT);
}

/* The key file is made once, 0600 whatever the umask, 32 bytes; the
 * registry's files never hold a PSK's text. */
static void test_cy_registry_device_psk_key_file(void **state)
{
    fixture *f = *state;
    char kp[256];
    key_path(f, kp, sizeof(kp));
    struct stat sb;
    assert_int_equal(stat(kp, &sb), -1); /* nothing needed it yet */
    mode_t old = umask(0);
    added a = add(f->r, "a");
    umask(old);
    assert_int_equal(stat(kp, &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(sb.st_size, 32);
    added b = add(f->r, "b");
    char psk[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(cy_registry_device_psk_new(f->r, "a", psk), 0);
    struct stat sb2;
    assert_int_equal(stat(kp, &sb2), 0);
    assert_int_equal(sb2.st_ino, sb.st_ino); /* the same file, not made again */
    /* No temporary file left beside it. */
    DIR *d = opendir(f->dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        assert_null(strstr(e->d_name, "registry.key."));
    closedir(d);

    const char *texts[] = {a.psk, b.psk, psk};
    const char *suffixes[] = {"", "-wal"};
    for (int i = 0; i < 2; i++) {
        char p[256];
        snprintf(p, sizeof(p), "%s%s", f->path, suffixes[i]);
        for (int t = 0; t < 3; t++)
            assert_false(file_holds(p, texts[t], CY_DEVICE_PSK_LEN));
    }
    /* What is stored: 60 bytes (nonce, ciphertext, tag) per device. */
    assert_int_equal(cyt_sql_int(f->path, "SELECT min(length(psk)) FROM devices"), 60);
    assert_int_equal(cyt_sql_int(f->path, "SELECT max(length(psk)) FROM devices"), 60);
}

/* Without its key file a registry does everything but PSKs: reading one
 * is CY_EIO, and no new key is made while PSKs sealed with the old one
 * exist. Put back, the key is read again. */
static void test_cy_registry_device_psk_missing_key(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "a");
    made t = mk(f->r, "t", CY_SCOPE_ALL);
    char iid[CY_DEVICE_ID_LEN + 1], isecret[CY_DEVICE_SECRET_LEN + 1], ipsk[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(
        cy_registry_internal_device(f->r, "cyan:canary:0", NULL, NULL, iid, isecret, ipsk), 0);
    cy_registry_close(f->r);
    f->r = NULL;
    char kp[256], moved[300];
    key_path(f, kp, sizeof(kp));
    snprintf(moved, sizeof(moved), "%s.away", kp);
    assert_int_equal(rename(kp, moved), 0);

    assert_int_equal(cy_registry_open(f->path, &f->r), 0);
    char got[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(psk_of(f->r, a.id, got), CY_EIO);
    assert_int_equal(psk_of(f->r, a.id, got), CY_EIO); /* again: logged once */
    assert_int_equal(check(f->r, a.id, a.secret), 0);
    int scope;
    assert_int_equal(tcheck(f->r, t.token, &scope, NULL), 0);
    cy_device d;
    assert_int_equal(cy_registry_device_get(f->r, "a", &d), 0);
    assert_int_equal(count_devices(f->r), 1);
    assert_int_equal(cy_registry_device_remove(f->r, "nope"), CY_ENOENT);
    /* A new key would orphan a's PSK: refused, and no file made. */
    char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1], psk[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(cy_registry_device_add(f->r, "b", id, secret, psk), CY_EIO);
    assert_string_equal(psk, "");
    assert_int_equal(cy_registry_device_psk_new(f->r, "a", psk), CY_EIO);
    /* cyan's canaries go on, without a PSK (the old one is dropped). */
    assert_int_equal(psk_of(f->r, iid, got), CY_EIO);
    strcpy(ipsk, "x");
    assert_int_equal(
        cy_registry_internal_device(f->r, "cyan:canary:0", NULL, NULL, iid, isecret, ipsk), 0);
    assert_string_equal(ipsk, "");
    assert_true(lower_hex(isecret, CY_DEVICE_SECRET_LEN));
    assert_int_equal(check(f->r, iid, isecret), 0);
    assert_int_equal(psk_of(f->r, iid, got), CY_ENOENT);
    struct stat sb;
    assert_int_equal(stat(kp, &sb), -1);

    /* Restored: read again at the next lookup after the retry pause. */
    assert_int_equal(rename(moved, kp), 0);
    past_recheck();
    assert_int_equal(psk_of(f->r, a.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, a.psk);
    added b = add(f->r, "b");
    assert_int_equal(psk_of(f->r, b.id, got), CY_DEVICE_PSK_LEN);

    /* A key file that is not 32 bytes is no key: CY_EIO, checks go on. */
    cy_registry_close(f->r);
    f->r = NULL;
    FILE *fp = fopen(kp, "ab");
    assert_non_null(fp);
    fputc('x', fp);
    fclose(fp);
    assert_int_equal(cy_registry_open(f->path, &f->r), 0);
    assert_int_equal(psk_of(f->r, a.id, got), CY_EIO);
    assert_int_equal(check(f->r, b.id, b.secret), 0);
    assert_int_equal(cy_registry_device_psk_new(f->r, "a", psk), CY_EIO);
}

/* A stored PSK that was changed, cut or moved to another row does not
 * open: CY_EIO, and the device's secret still works. */
static void test_cy_registry_device_psk_tampered(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "a"), b = add(f->r, "b"), c = add(f->r, "c"), e = add(f->r, "e");
    char sql[512], got[CY_DEVICE_PSK_LEN + 1];
    /* One bit off: in the ciphertext (byte 20), the tag (the last), the
     * nonce (the first). */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    const char *ids[] = {a.id, b.id, c.id};
    const int at[] = {20, 59, 0};
    for (int i = 0; i < 3; i++) {
        sqlite3_stmt *st;
        assert_int_equal(
            sqlite3_prepare_v2(db, "SELECT psk FROM devices WHERE id = ?1", -1, &st, NULL),
            SQLITE_OK);
        sqlite3_bind_text(st, 1, ids[i], -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_int_equal(sqlite3_column_bytes(st, 0), 60);
        uint8_t blob[60];
        memcpy(blob, sqlite3_column_blob(st, 0), 60);
        sqlite3_finalize(st);
        blob[at[i]] ^= 1;
        assert_int_equal(
            sqlite3_prepare_v2(db, "UPDATE devices SET psk = ?2 WHERE id = ?1", -1, &st, NULL),
            SQLITE_OK);
        sqlite3_bind_text(st, 1, ids[i], -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, blob, 60, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    assert_int_equal(psk_of(f->r, a.id, got), CY_EIO);
    assert_int_equal(psk_of(f->r, b.id, got), CY_EIO);
    assert_int_equal(psk_of(f->r, c.id, got), CY_EIO);
    assert_int_equal(check(f->r, a.id, a.secret), 0);
    /* e's record copied to a: sealed for e, it does not open as a's. */
    snprintf(sql, sizeof(sql),
             "UPDATE devices SET psk = (SELECT psk FROM devices WHERE id = '%s') WHERE id = '%s'",
             e.id, a.id);
    cyt_sql_exec(f->path, sql);
    assert_int_equal(psk_of(f->r, a.id, got), CY_EIO);
    assert_int_equal(psk_of(f->r, e.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, e.psk);
    /* Cut short, or not a blob of the right size. */
    snprintf(sql, sizeof(sql), "UPDATE devices SET psk = substr(psk, 1, 59) WHERE id = '%s'", e.id);
    cyt_sql_exec(f->path, sql);
    assert_int_equal(psk_of(f->r, e.id, got), CY_EIO);
    snprintf(sql, sizeof(sql), "UPDATE devices SET psk = x'' WHERE id = '%s'", e.id);
    cyt_sql_exec(f->path, sql);
    assert_int_equal(psk_of(f->r, e.id, got), CY_EIO);
    /* A new PSK mends it. */
    char psk[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(cy_registry_device_psk_new(f->r, e.id, psk), 0);
    assert_int_equal(psk_of(f->r, e.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, psk);
    assert_int_equal(check(f->r, e.id, e.secret), 0);
}

static void test_cy_registry_device_psk_new(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "a"), b = add(f->r, "b");
    char p1[CY_DEVICE_PSK_LEN + 1], p2[CY_DEVICE_PSK_LEN + 1], got[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(cy_registry_device_psk_new(f->r, "a", p1), 0); /* by name */
    assert_true(lower_hex(p1, CY_DEVICE_PSK_LEN));
    assert_string_not_equal(p1, a.psk);
    assert_int_equal(psk_of(f->r, a.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, p1);
    assert_int_equal(cy_registry_device_psk_new(f->r, a.id, p2), 0); /* by id */
    assert_string_not_equal(p2, p1);
    assert_int_equal(psk_of(f->r, a.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, p2);
    /* The others and the secret are untouched. */
    assert_int_equal(psk_of(f->r, b.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, b.psk);
    assert_int_equal(check(f->r, a.id, a.secret), 0);

    /* Unknown, internal, bad arguments. */
    char psk[CY_DEVICE_PSK_LEN + 1] = "x";
    assert_int_equal(cy_registry_device_psk_new(f->r, "nope", psk), CY_ENOENT);
    assert_string_equal(psk, "");
    assert_int_equal(cy_registry_device_psk_new(f->r, "000000000000000000000000", psk), CY_ENOENT);
    char iid[CY_DEVICE_ID_LEN + 1], isecret[CY_DEVICE_SECRET_LEN + 1], ipsk[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(
        cy_registry_internal_device(f->r, "cyan:canary:0", NULL, NULL, iid, isecret, ipsk), 0);
    assert_int_equal(cy_registry_device_psk_new(f->r, iid, psk), CY_ENOENT);
    assert_int_equal(cy_registry_device_psk_new(f->r, "cyan:canary:0", psk), CY_ENOENT);
    assert_int_equal(psk_of(f->r, iid, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, ipsk);
    assert_int_equal(cy_registry_device_psk_new(f->r, NULL, psk), CY_EINVAL);
    assert_int_equal(cy_registry_device_psk_new(f->r, "a", NULL), CY_EINVAL);
    assert_int_equal(cy_registry_device_psk_new(NULL, "a", psk), CY_EINVAL);

    /* A shard's handle sees the new PSK from its next pass: within one
     * shared read it keeps the snapshot it began. */
    cy_registry *shard;
    assert_int_equal(cy_registry_open(f->path, &shard), 0);
    cy_registry_share_reads(shard, true);
    assert_int_equal(psk_of(shard, a.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, p2);
    char p3[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(cy_registry_device_psk_new(f->r, "a", p3), 0);
    assert_int_equal(psk_of(shard, a.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, p2);
    cy_registry_end_reads(shard);
    assert_int_equal(psk_of(shard, a.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, p3);
    cy_registry_end_reads(shard);
    cy_registry_close(shard);
}

/* Two processes opened before there was a key file: the first PSK makes
 * it, and the other reads it for lookups and for its own additions. */
static void test_cy_registry_device_psk_key_made_elsewhere(void **state)
{
    fixture *f = *state;
    cy_registry *cli;
    assert_int_equal(cy_registry_open(f->path, &cli), 0); /* no key file: both */
    added a = add(cli, "a");
    char got[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(psk_of(f->r, a.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, a.psk);
    added b = add(f->r, "b");
    assert_int_equal(psk_of(cli, b.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, b.psk);
    cy_registry_close(cli);
}

/* Back from version 6 to a genuine 5: the token columns of version 6
 * dropped (SQLite >= 3.35) and the masks back to the three scopes of old
 * (1 read-only, 2 full, 3 internal). */
#define TO_V5                                                                                      \
    "ALTER TABLE tokens DROP COLUMN expires_at; ALTER TABLE tokens DROP COLUMN last_used_at;"      \
    "UPDATE tokens SET scope = CASE scope WHEN 5 THEN 1 WHEN 63 THEN 2 WHEN 64 THEN 3 END;"        \
    "PRAGMA user_version = 5"

/* A version 5 file becomes version 6: a read-only token holds devices:read
 * and events:read, a full one every user scope, an internal one the
 * internal scope; a row with a scope version 5 never had is refused, not
 * turned into some scope; none expires; the table is a new file's. */
static void test_cy_registry_open_migrates_v5(void **state)
{
    fixture *f = *state;
    char old[256];
    snprintf(old, sizeof(old), "%s/v5.db", f->dir);
    cy_registry *r = NULL;
    assert_int_equal(cy_registry_open(old, &r), 0);
    made ro = mk(r, "ro", CY_SCOPE_READ_ONLY), full = mk(r, "full", CY_SCOPE_ALL);
    made odd = mk(r, "odd", CY_SCOPE_ALL);
    made in;
    assert_int_equal(cy_registry_internal_token(r, "cyan:canary", in.id, in.token), 0);
    cy_registry_close(r);
    sql_exec(old, TO_V5);
    char sql[128];
    snprintf(sql, sizeof(sql), "UPDATE tokens SET scope = 4 WHERE id = '%s'", odd.id);
    sql_exec(old, sql);
    assert_int_equal(sql_int(old, "SELECT count(*) FROM tokens WHERE scope IN (1, 2, 3)"), 3);

    assert_int_equal(cy_registry_open(old, &r), 0);
    assert_int_equal(sql_int(old, "PRAGMA user_version"), CURRENT_VERSION);
    int scope = 0;
    assert_int_equal(tcheck(r, ro.token, &scope, NULL), 0);
    assert_int_equal(scope, CY_SCOPE_DEVICES_READ | CY_SCOPE_EVENTS_READ);
    assert_int_equal(tcheck(r, full.token, &scope, NULL), 0);
    assert_int_equal(scope, CY_SCOPE_ALL);
    assert_int_equal(tcheck(r, in.token, &scope, NULL), 0);
    assert_int_equal(scope, CY_SCOPE_INTERNAL);
    assert_int_not_equal(tcheck(r, odd.token, &scope, NULL), 0);
    assert_int_equal(scope, 0);
    assert_int_equal(sql_int(old, "SELECT count(*) FROM tokens WHERE expires_at = 0"), 4);
    cy_registry_close(r);
    char *got = table_sql(old, "tokens"), *want = table_sql(f->path, "tokens");
    assert_string_equal(got, want);
    free(got);
    free(want);
}

/* A version 4 file (devices without psk) becomes version 5: its devices,
 * user and internal, keep working and have no PSK (CY_ENOENT) until one is
 * issued; no key file is made until then. */
static void test_cy_registry_open_migrates_v4(void **state)
{
    fixture *f = *state;
    char old[256], kp[256];
    snprintf(old, sizeof(old), "%s/v4.db", f->dir);
    key_path(f, kp, sizeof(kp));
    cy_registry_close(f->r);
    f->r = NULL;
    make_v1(old);
    cy_registry *r = NULL;
    /* Up to 4 with the migrations of cyan's own past, then back to a
     * genuine 4: the column dropped (SQLite >= 3.35). */
    assert_int_equal(cy_registry_open(old, &r), 0);
    char iid[CY_DEVICE_ID_LEN + 1], isecret[CY_DEVICE_SECRET_LEN + 1];
    assert_int_equal(
        cy_registry_internal_device(r, "cyan:canary:0", NULL, NULL, iid, isecret, NULL), 0);
    cy_registry_close(r);
    sql_exec(old, TO_V5);
    sql_exec(old, "ALTER TABLE devices DROP COLUMN psk; PRAGMA user_version = 4");
    assert_int_equal(unlink(kp), 0);

    assert_int_equal(cy_registry_open(old, &r), 0);
    assert_int_equal(sql_int(old, "PRAGMA user_version"), CURRENT_VERSION);
    assert_int_equal(sql_int(old, "SELECT count(*) FROM devices WHERE psk IS NULL"), 2);
    assert_int_equal(check(r, V1_ID, V1_SECRET), 0);
    assert_int_equal(check(r, iid, isecret), 0);
    char got[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(psk_of(r, V1_ID, got), CY_ENOENT);
    assert_int_equal(psk_of(r, iid, got), CY_ENOENT);
    struct stat sb;
    assert_int_equal(stat(kp, &sb), -1);
    /* The first PSK makes the key file. */
    char psk[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(cy_registry_device_psk_new(r, "old", psk), 0);
    assert_int_equal(stat(kp, &sb), 0);
    assert_int_equal(psk_of(r, V1_ID, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, psk);
    assert_int_equal(psk_of(r, iid, got), CY_ENOENT); /* until the monitor's next start */
    char isecret2[CY_DEVICE_SECRET_LEN + 1], ipsk[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(
        cy_registry_internal_device(r, "cyan:canary:0", NULL, NULL, iid, isecret2, ipsk), 0);
    assert_int_equal(psk_of(r, iid, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, ipsk);
    cy_registry_close(r);
    /* Reopened: the migrated file reads as is. */
    assert_int_equal(cy_registry_open(old, &r), 0);
    assert_int_equal(psk_of(r, V1_ID, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, psk);
    cy_registry_close(r);
    assert_int_equal(cy_registry_open(f->path, &f->r), 0); /* for the teardown */
}

/* An in-memory registry keeps its key in memory: PSKs work for the handle. */
static void test_cy_registry_device_psk_in_memory(void **state)
{
    (void)state;
    cy_registry *r;
    assert_int_equal(cy_registry_open(":memory:", &r), 0);
    added a = add(r, "a");
    char got[CY_DEVICE_PSK_LEN + 1];
    assert_int_equal(psk_of(r, a.id, got), CY_DEVICE_PSK_LEN);
    assert_string_equal(got, a.psk);
    cy_registry_close(r);
}

/* ---- scopes, expiry, last use, derived keys (schema version 6) ---- */

static made mk_exp(cy_registry *r, const char *name, unsigned scopes, int64_t expires_at)
{
    made m;
    assert_int_equal(cy_registry_token_create(r, name, scopes, expires_at, m.id, m.token), 0);
    return m;
}

/* A token works until its expiry, to the millisecond, and then says
 * CY_ETIMEDOUT (with its id and expiry, no scopes) only to who holds the
 * secret: a wrong secret is CY_EACCES whatever the time. */
static void test_cy_registry_token_check_expiry(void **state)
{
    fixture *f = *state;
    made m = mk_exp(f->r, "short", CY_SCOPE_EVENTS_READ, 5000);
    cy_token_auth ta;
    assert_int_equal(cy_registry_token_check(f->r, m.token, TOKEN_LEN, 4999, &ta), 0);
    assert_int_equal(ta.scopes, CY_SCOPE_EVENTS_READ);
    assert_int_equal(ta.expires_at, 5000);
    assert_string_equal(ta.id, m.id);
    assert_int_equal(cy_registry_token_check(f->r, m.token, TOKEN_LEN, 5000, &ta), CY_ETIMEDOUT);
    assert_int_equal(ta.scopes, 0);
    assert_int_equal(ta.expires_at, 5000);
    assert_string_equal(ta.id, m.id);
    char wrong[TOKEN_LEN + 1];
    memcpy(wrong, m.token, TOKEN_LEN + 1);
    wrong[TOKEN_LEN - 1] = wrong[TOKEN_LEN - 1] == 'a' ? 'b' : 'a';
    assert_int_equal(cy_registry_token_check(f->r, wrong, TOKEN_LEN, 9999, &ta), CY_EACCES);
    assert_int_equal(ta.expires_at, 0);
    assert_string_equal(ta.id, "");
    /* From the cache too, and from another handle (the file). */
    assert_int_equal(cy_registry_token_check(f->r, m.token, TOKEN_LEN, 6000, &ta), CY_ETIMEDOUT);
    cy_registry *other;
    assert_int_equal(cy_registry_open(f->path, &other), 0);
    assert_int_equal(cy_registry_token_check(other, m.token, TOKEN_LEN, 4000, &ta), 0);
    assert_int_equal(cy_registry_token_check(other, m.token, TOKEN_LEN, 7000, &ta), CY_ETIMEDOUT);
    /* No expiry: never. */
    made n = mk(f->r, "forever", CY_SCOPE_ADMIN);
    assert_int_equal(cy_registry_token_check(f->r, n.token, TOKEN_LEN, INT64_MAX, &ta), 0);
    assert_int_equal(ta.expires_at, 0);
    assert_int_equal(cy_registry_token_check(f->r, n.token, TOKEN_LEN, 1, NULL), CY_EINVAL);
    cy_registry_close(other);
}

/* cy_registry_token_auth: a token by id, no secret, same answers. */
static void test_cy_registry_token_auth(void **state)
{
    fixture *f = *state;
    made m = mk_exp(f->r, "t", CY_SCOPE_EVENTS_READ | CY_SCOPE_DEVICES_READ, 5000);
    cy_token_auth ta;
    assert_int_equal(cy_registry_token_auth(f->r, m.id, 1000, &ta), 0);
    assert_int_equal(ta.scopes, CY_SCOPE_EVENTS_READ | CY_SCOPE_DEVICES_READ);
    assert_int_equal(ta.expires_at, 5000);
    assert_string_equal(ta.id, m.id);
    assert_int_equal(cy_registry_token_auth(f->r, m.id, 5000, &ta), CY_ETIMEDOUT);
    assert_int_equal(ta.scopes, 0);
    assert_int_equal(cy_registry_token_auth(f->r, "0123456789ab", 1000, &ta), CY_ENOENT);
    assert_int_equal(cy_registry_token_auth(f->r, "short", 1000, &ta), CY_ENOENT);
    assert_int_equal(cy_registry_token_auth(f->r, "0123456789AB", 1000, &ta), CY_ENOENT);
    assert_int_equal(cy_registry_token_auth(f->r, NULL, 1000, &ta), CY_EINVAL);
    assert_int_equal(cy_registry_token_auth(f->r, m.id, 1000, NULL), CY_EINVAL);
    assert_int_equal(cy_registry_token_revoke(f->r, m.id), 0);
    assert_int_equal(cy_registry_token_auth(f->r, m.id, 1000, &ta), CY_ENOENT);
}

static int64_t used_in_file(const fixture *f, const char *id)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT last_used_at FROM tokens WHERE id = '%s'", id);
    return sql_int(f->path, sql);
}

typedef struct used_of {
    const char *id;
    int64_t used;
} used_of;

static int find_used(void *ctx, const cy_token *t)
{
    used_of *u = ctx;
    if (!strcmp(t->id, u->id)) u->used = t->last_used_at;
    return 0;
}

/* Last use: noted by checks in memory, written by the flush at most once
 * a minute per token (the first use at once), listed from memory before
 * it is written, and written at close. A failed check is no use. */
static void test_cy_registry_token_last_used(void **state)
{
    fixture *f = *state;
    const int64_t T = 1700000000000; /* a wall time, ms */
    made a = mk(f->r, "a", CY_SCOPE_ALL), b = mk(f->r, "b", CY_SCOPE_ALL);
    cy_token_auth ta;
    assert_int_equal(cy_registry_token_flush(f->r, T, false), 0); /* nothing noted */
    assert_int_equal(cy_registry_token_check(f->r, a.token, TOKEN_LEN, T, &ta), 0);
    assert_int_equal(used_in_file(f, a.id), 0); /* a check never writes */
    used_of u = {a.id, 0};
    assert_int_equal(cy_registry_token_list(f->r, find_used, &u), 0);
    assert_int_equal(u.used, T); /* but the list knows */
    assert_int_equal(cy_registry_token_flush(f->r, T + 100, false), 1);
    assert_int_equal(used_in_file(f, a.id), T);
    assert_int_equal(used_in_file(f, b.id), 0);
    /* Used again within the minute: not written... */
    assert_int_equal(cy_registry_token_check(f->r, a.token, TOKEN_LEN, T + 30000, &ta), 0);
    assert_int_equal(cy_registry_token_flush(f->r, T + 31000, false), 0);
    assert_int_equal(used_in_file(f, a.id), T);
    /* ... until the minute since the last write has passed. */
    assert_int_equal(cy_registry_token_flush(f->r, T + 60100, false), 1);
    assert_int_equal(used_in_file(f, a.id), T + 30000);
    /* A wrong secret or an expired token is no use. */
    char wrong[TOKEN_LEN + 1];
    memcpy(wrong, b.token, TOKEN_LEN + 1);
    wrong[TOKEN_LEN - 1] = wrong[TOKEN_LEN - 1] == 'a' ? 'b' : 'a';
    assert_int_equal(cy_registry_token_check(f->r, wrong, TOKEN_LEN, T + 70000, &ta), CY_EACCES);
    made e = mk_exp(f->r, "e", CY_SCOPE_ALL, T);
    assert_int_equal(cy_registry_token_check(f->r, e.token, TOKEN_LEN, T + 70000, &ta),
                     CY_ETIMEDOUT);
    assert_int_equal(cy_registry_token_flush(f->r, T + 200000, false), 0);
    assert_int_equal(used_in_file(f, b.id), 0);
    assert_int_equal(used_in_file(f, e.id), 0);
    /* Another process's uses never go back in time. */
    cy_registry *other;
    assert_int_equal(cy_registry_open(f->path, &other), 0);
    assert_int_equal(cy_registry_token_check(other, a.token, TOKEN_LEN, T + 1, &ta), 0);
    assert_int_equal(cy_registry_token_flush(other, T + 2, false), 1);
    assert_int_equal(used_in_file(f, a.id), T + 30000);
    /* What is not yet due is written at close; a token used through the
     * auth of a stream token counts as used. */
    assert_int_equal(cy_registry_token_auth(other, b.id, T + 3, &ta), 0);
    assert_int_equal(cy_registry_token_check(other, a.token, TOKEN_LEN, T + 40000, &ta), 0);
    cy_registry_close(other);
    assert_int_equal(used_in_file(f, a.id), T + 40000);
    assert_int_equal(used_in_file(f, b.id), T + 3);
    /* A revoked token's use is dropped without harm. */
    assert_int_equal(cy_registry_token_check(f->r, b.token, TOKEN_LEN, T + 300000, &ta), 0);
    assert_int_equal(cy_registry_token_revoke(f->r, b.id), 0);
    assert_true(cy_registry_token_flush(f->r, T + 400000, true) >= 0);
}

/* Uses are written together once a minute: a new token's first use at
 * once, then the newer uses of every token in one write. */
static void test_cy_registry_token_used_batched(void **state)
{
    fixture *f = *state;
    const int64_t T = 1700000000000;
    made a = mk(f->r, "a", CY_SCOPE_ALL), b = mk(f->r, "b", CY_SCOPE_ALL);
    cy_token_auth ta;
    assert_int_equal(cy_registry_token_check(f->r, a.token, TOKEN_LEN, T, &ta), 0);
    assert_int_equal(cy_registry_token_flush(f->r, T + 100, false), 1);
    assert_int_equal(cy_registry_token_check(f->r, b.token, TOKEN_LEN, T + 10000, &ta), 0);
    assert_int_equal(cy_registry_token_flush(f->r, T + 10100, false), 1); /* b's first */
    assert_int_equal(used_in_file(f, b.id), T + 10000);
    assert_int_equal(cy_registry_token_check(f->r, a.token, TOKEN_LEN, T + 20000, &ta), 0);
    assert_int_equal(cy_registry_token_check(f->r, b.token, TOKEN_LEN, T + 20000, &ta), 0);
    assert_int_equal(cy_registry_token_flush(f->r, T + 30000, false), 0);
    assert_int_equal(cy_registry_token_flush(f->r, T + 30500, false), 0); /* within a second */
    assert_int_equal(cy_registry_token_flush(f->r, T + 60100, false), 2); /* both, once */
    assert_int_equal(used_in_file(f, a.id), T + 20000);
    assert_int_equal(used_in_file(f, b.id), T + 20000);
    assert_int_equal(cy_registry_token_flush(f->r, T + 130000, false), 0);
    assert_int_equal(cy_registry_token_flush(NULL, T, false), CY_EINVAL);
}

/* A derived key is the same in every handle of the node, differs by label,
 * is not the key file itself, and without make needs the key file. */
static void test_cy_registry_subkey(void **state)
{
    fixture *f = *state;
    char kp[256];
    key_path(f, kp, sizeof(kp));
    unlink(kp); /* the fixture's handle may have made one already */
    cy_registry_close(f->r);
    assert_int_equal(cy_registry_open(f->path, &f->r), 0);
    uint8_t k1[CY_REGISTRY_SUBKEY_LEN], k2[CY_REGISTRY_SUBKEY_LEN], k3[CY_REGISTRY_SUBKEY_LEN];
    assert_int_equal(cy_registry_subkey(f->r, "x", false, k1), CY_EIO); /* no key file */
    assert_int_equal(cy_registry_subkey(f->r, "x", true, k1), 0);       /* made */
    struct stat sb;
    assert_int_equal(stat(kp, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    cy_registry *other;
    assert_int_equal(cy_registry_open(f->path, &other), 0);
    assert_int_equal(cy_registry_subkey(other, "x", false, k2), 0);
    assert_memory_equal(k1, k2, sizeof(k1));
    assert_int_equal(cy_registry_subkey(other, "y", false, k3), 0);
    assert_memory_not_equal(k1, k3, sizeof(k1));
    uint8_t file[32];
    FILE *fp = fopen(kp, "rb");
    assert_non_null(fp);
    assert_int_equal(fread(file, 1, sizeof(file), fp), sizeof(file));
    fclose(fp);
    assert_memory_not_equal(file, k1, sizeof(file));
    assert_int_equal(cy_registry_subkey(other, NULL, false, k3), CY_EINVAL);
    assert_int_equal(cy_registry_subkey(NULL, "x", false, k3), CY_EINVAL);
    cy_registry_close(other);
}

/* Scope names and lists, and durations (store/scopes.c). */
static void test_cy_scopes_parse_format(void **state)
{
    (void)state;
    unsigned s = 0;
    char bad[32];
    assert_int_equal(cy_scopes_parse("devices:read,events:read", &s, bad, sizeof(bad)), 0);
    assert_int_equal(s, CY_SCOPE_READ_ONLY);
    assert_int_equal(cy_scopes_parse(" admin , admin,webhooks:manage ", &s, bad, sizeof(bad)), 0);
    assert_int_equal(s, CY_SCOPE_ADMIN | CY_SCOPE_WEBHOOKS_MANAGE);
    const char *all = "devices:read,devices:call,events:read,events:publish,webhooks:manage,admin";
    assert_int_equal(cy_scopes_parse(all, &s, bad, sizeof(bad)), 0);
    assert_int_equal(s, CY_SCOPE_ALL);
    char out[128];
    assert_int_equal(cy_scopes_format(CY_SCOPE_ALL, out, sizeof(out)), strlen(all));
    assert_string_equal(out, all);
    assert_int_equal(cy_scopes_format(CY_SCOPE_INTERNAL, out, sizeof(out)), 8);
    assert_string_equal(out, "internal");
    assert_int_equal(cy_scopes_format(0, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(cy_scopes_format(CY_SCOPE_READ_ONLY, out, 5),
                     strlen("devices:read,events:read"));
    assert_string_equal(out, "devi"); /* cut, terminated */
    struct {
        const char *text, *bad;
    } wrong[] = {{"devices:read,bogus", "bogus"},
                 {"", ""},
                 {"admin,", ""},
                 {"internal", "internal"},
                 {"ADMIN", "ADMIN"},
                 {"admin;x", "admin;x"},
                 {",admin", ""},
                 {"devices:readx", "devices:readx"}};
    for (size_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++) {
        s = 77;
        assert_int_equal(cy_scopes_parse(wrong[i].text, &s, bad, sizeof(bad)), CY_EINVAL);
        assert_string_equal(bad, wrong[i].bad);
        assert_int_equal(s, 77);
    }
    assert_int_equal(cy_scopes_parse("averyveryverylongscopename", &s, bad, 6), CY_EINVAL);
    assert_string_equal(bad, "avery");
    assert_int_equal(cy_scopes_parse("x", &s, NULL, 0), CY_EINVAL);
    assert_int_equal(cy_scopes_parse(NULL, &s, bad, sizeof(bad)), CY_EINVAL);
    for (unsigned bit = 1; bit <= CY_SCOPE_INTERNAL; bit <<= 1) {
        const char *name = cy_scope_name(bit);
        assert_non_null(name);
        assert_true(strlen(name) < CY_SCOPE_NAME_MAX);
        unsigned back = 0;
        assert_int_equal(cy_scope_parse(name, strlen(name), &back),
                         bit == CY_SCOPE_INTERNAL ? CY_EINVAL : 0);
        if (bit != CY_SCOPE_INTERNAL) assert_int_equal(back, bit);
    }
    assert_null(cy_scope_name(0));
    assert_null(cy_scope_name(3));
    assert_null(cy_scope_name(1u << 7));

    int64_t ms = 0;
    assert_int_equal(cy_duration_parse("30d", &ms), 0);
    assert_int_equal(ms, 30LL * 86400 * 1000);
    assert_int_equal(cy_duration_parse("12h", &ms), 0);
    assert_int_equal(ms, 12LL * 3600 * 1000);
    assert_int_equal(cy_duration_parse("90m", &ms), 0);
    assert_int_equal(ms, 90LL * 60 * 1000);
    assert_int_equal(cy_duration_parse("2s", &ms), 0);
    assert_int_equal(ms, 2000);
    assert_int_equal(cy_duration_parse("3600", &ms), 0);
    assert_int_equal(ms, 3600000);
    assert_int_equal(cy_duration_parse("3660d", &ms), 0);
    const char *bad_d[] = {"", "d", "-1d", "1.5h", "1w", "1dd", " 1d", "1d ", "+1", "0x10"};
    for (size_t i = 0; i < sizeof(bad_d) / sizeof(bad_d[0]); i++)
        assert_int_equal(cy_duration_parse(bad_d[i], &ms), CY_EINVAL);
    assert_int_equal(cy_duration_parse("0", &ms), CY_ERANGE);
    assert_int_equal(cy_duration_parse("0d", &ms), CY_ERANGE);
    assert_int_equal(cy_duration_parse("3661d", &ms), CY_ERANGE);
    assert_int_equal(cy_duration_parse("99999999999999999999999", &ms), CY_ERANGE);
    assert_int_equal(cy_duration_parse(NULL, &ms), CY_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cy_registry_open_missing_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_open_newer_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_open_alloc_fail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_add_formats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_add_stores_hash_only, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_check_right_secret, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_check_wrong_secret, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_check_uppercase_secret, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_check_unknown_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_add_duplicate_name, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_add_bad_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_add_persists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_create_formats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_check_right_secret, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_check_wrong_secret, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_check_unknown_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_check_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_create_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_create_stores_hash_only, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_revoke, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_bootstrap_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_bootstrap_existing_tokens, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_bootstrap_stale_file, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_bootstrap_fs_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_bootstrap_alloc_fail, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_bootstrap_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_open_new_is_current, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_open_migrates_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_open_migrates_v2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_open_migrates_v5, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_check_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_last_used, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_used_batched, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_subkey, setup, teardown),
        cmocka_unit_test(test_cy_scopes_parse_format),
        cmocka_unit_test_setup_teardown(test_cy_registry_internal_device_ensure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_internal_device_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_internal_device_other_process, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_internal_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_token_bootstrap_ignores_internal, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_open_migration_atomic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_share_reads_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_cache_hit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_write_lock_fails_fast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_cache_invalidation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_fresh, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_psk_issued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_psk_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_psk_key_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_psk_missing_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_psk_tampered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_psk_new, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_psk_key_made_elsewhere, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_open_migrates_v4, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_psk_in_memory, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
