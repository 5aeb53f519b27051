/* store_testlib: what the store-level unit tests share (test_store,
 * test_store_events, test_store_hooks, test_store_registry,
 * test_statuspage): a temporary folder per test, SQL from the test's own
 * connection (to look at or damage a file behind the store's back), and a
 * recorder that turns loader callbacks into text to compare whole.
 * Header-only (static inline: a test that uses part of it gets no warning
 * for the rest). Thread: the test's.
 */
#ifndef CY_STORE_TESTLIB_H
#define CY_STORE_TESTLIB_H

#include <dirent.h>
#include <setjmp.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/cy_alloc.h"
#include "store/store.h"

/* Make a fresh folder from template (e.g. "/tmp/cyan-store-XXXXXX") into
 * dir (room for the template and its NUL). 0, or -1. */
static inline int cyt_dir_make(char *dir, size_t len, const char *template)
{
    snprintf(dir, len, "%s", template);
    return mkdtemp(dir) ? 0 : -1;
}

/* Remove dir and the files in it (one level: the tests make no subfolders
 * they leave behind). */
static inline void cyt_dir_remove(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(dir);
}

/* ---- a registry in a fresh folder, per test ---- */

typedef struct cyt_registry_fixture {
    char dir[64];
    char path[128]; /* dir/registry.db */
    cy_registry *r;
} cyt_registry_fixture;

/* cmocka setup: *state gets a cyt_registry_fixture with its registry open,
 * in a folder made from template ("/tmp/cyan-...-XXXXXX"). */
static inline int cyt_registry_setup(void **state, const char *template)
{
    cyt_registry_fixture *f = calloc(1, sizeof(*f));
    if (!f) return -1;
    if (cyt_dir_make(f->dir, sizeof(f->dir), template)) {
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

/* cmocka teardown for cyt_registry_setup; also ends any allocation fault. */
static inline int cyt_registry_teardown(void **state)
{
    cyt_registry_fixture *f = *state;
    cy_registry_close(f->r);
    cyt_dir_remove(f->dir);
    free(f);
    cy_alloc_fail_after(-1);
    return 0;
}

/* Run sql on the database at path from a connection of the test's own;
 * any error fails the test. */
static inline void cyt_sql_exec(const char *path, const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) fail_msg("%s: %s", sql, err);
    sqlite3_close(db);
}

/* The first column of the first row of sql (which must have one). */
static inline long long cyt_sql_int(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* ---- the recorder ---- */

typedef struct rec {
    char log[16384];
    size_t len;
    int stop_at; /* callback number that returns 42; 0 = never */
    int calls;
} rec;

static inline void out(rec *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void out(rec *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->log + r->len, sizeof(r->log) - r->len, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof(r->log) - r->len);
    r->len += (size_t)n;
}

/* Bytes as printable ASCII with \xNN escapes, so NULs and lengths show. */
static inline void out_bytes(rec *r, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] >= 0x21 && b[i] < 0x7f && b[i] != '\\')
            out(r, "%c", b[i]);
        else
            out(r, "\\x%02x", b[i]);
    }
}

/* Count a callback; the stop_at-th returns 42. */
static inline int next(rec *r)
{
    return ++r->calls == r->stop_at ? 42 : 0;
}

#endif
