/* Tests of cy_registry (src/store/registry.c): device creation (id and
 * secret formats, name rules, uniqueness), secret checks (right, wrong,
 * unknown, malformed), what is stored (salt and HMAC, never the secret),
 * lookup and removal by id or name, listing in creation order, reopening,
 * shared read transactions (one snapshot until cy_registry_end_reads),
 * and the open error paths.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "store/store.h"

#include <dirent.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct fixture {
    char dir[64];
    char path[128];
    cy_registry *r;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (!f) return -1;
    strcpy(f->dir, "/tmp/cyan-registry-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/registry.db", f->dir);
    if (cy_registry_open(f->path, &f->r)) {
        rmdir(f->dir);
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    cy_registry_close(f->r);
    DIR *d = opendir(f->dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof(p), "%s/%s", f->dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(f->dir);
    free(f);
    cy_alloc_fail_after(-1);
    return 0;
}

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
} added;

static added add(cy_registry *r, const char *name)
{
    added a;
    assert_int_equal(cy_registry_device_add(r, name, a.id, a.secret), 0);
    return a;
}

static int check(cy_registry *r, const char *id, const char *secret)
{
    return cy_registry_device_check(r, id, strlen(id), (const uint8_t *)secret, strlen(secret));
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
    assert_int_equal(cy_registry_device_add(f->r, "dup", id, secret), CY_EEXIST);
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
        assert_int_equal(cy_registry_device_add(f->r, bad[i], id, secret), CY_EINVAL);
    assert_int_equal(cy_registry_device_add(f->r, NULL, id, secret), CY_EINVAL);
    assert_int_equal(cy_registry_device_add(f->r, "ok", NULL, secret), CY_EINVAL);
    assert_int_equal(cy_registry_device_add(f->r, "ok", id, NULL), CY_EINVAL);

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
    assert_int_equal(check(f->r, a.id, a.secret), CY_ENOENT);
    cy_registry_close(other);
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
        cmocka_unit_test_setup_teardown(test_cy_registry_share_reads_snapshot, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
