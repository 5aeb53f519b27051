/* db: the one way cyan opens a SQLite file; see db.h. */
#include "store/db.h"

#include "core/cy_err.h"
#include "core/cy_log.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cy_db_fail(sqlite3 *db, const char *name, const char *what)
{
    cy_error(NULL, "%s: %s: %s", name, what, db ? sqlite3_errmsg(db) : "out of memory");
    return CY_ESTORE;
}

static int open_fail(sqlite3 *db, const cy_db_schema *s, const char *path, const char *what)
{
    cy_error(NULL, "%s: open %s: %s: %s", s->name, path, what,
             db ? sqlite3_errmsg(db) : "out of memory");
    return CY_ESTORE;
}

static int int_cb(void *ctx, int ncol, char **vals, char **names)
{
    (void)names;
    if (ncol > 0 && vals[0]) *(int *)ctx = (int)strtol(vals[0], NULL, 10);
    return 0;
}

static int wal_cb(void *ctx, int ncol, char **vals, char **names)
{
    (void)names;
    if (ncol > 0 && vals[0]) *(bool *)ctx = strcmp(vals[0], "wal") == 0;
    return 0;
}

static int read_version(sqlite3 *db, int *version)
{
    *version = 0;
    return sqlite3_exec(db, "PRAGMA user_version", int_cb, version, NULL) == SQLITE_OK ? 0
                                                                                      : CY_ESTORE;
}

static int schema(sqlite3 *db, const cy_db_schema *s, const char *path)
{
    int version;
    if (read_version(db, &version)) return open_fail(db, s, path, "user_version");
    if (version == s->version) return 0;
    if (version > s->version) {
        cy_error(NULL, "%s: %s has schema version %d, newer than this cyan's %d", s->name, path,
                 version, s->version);
        return CY_ESTORE;
    }
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return open_fail(db, s, path, "begin schema");
    if (read_version(db, &version)) {
        open_fail(db, s, path, "user_version");
        goto rollback;
    }
    if (version == 0) {
        if (sqlite3_exec(db, s->create, NULL, NULL, NULL) != SQLITE_OK) {
            open_fail(db, s, path, "create schema");
            goto rollback;
        }
        version = s->version;
    }
    for (; version < s->version; version++) {
        cy_info(NULL, "%s: %s: migrating schema version %d to %d", s->name, path, version,
                version + 1);
        if (sqlite3_exec(db, s->migrate[version], NULL, NULL, NULL) != SQLITE_OK) {
            open_fail(db, s, path, "migrate schema");
            goto rollback;
        }
    }
    if (version > s->version) {
        cy_error(NULL, "%s: %s has schema version %d, newer than this cyan's %d", s->name, path,
                 version, s->version);
        goto rollback;
    }
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK) return 0;
    open_fail(db, s, path, "commit schema");
rollback:
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return CY_ESTORE;
}

static int exec_rows(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : CY_ESTORE;
}

/* Live data up to which an old file is converted at open: VACUUM copies
 * what the file holds (free pages cost nothing), about a second for this
 * much, well inside the time a starting shard is given. */
#define CONVERT_MAX_LIVE (64LL << 20)

/* A file made before incremental auto-vacuum: convert it once. VACUUM
 * rewrites the file (it needs that much free disk for a moment), which is
 * why this is done at open, before the loop serves anyone, and only when
 * little is live: a longer VACUUM would outlast the supervisor's start
 * grace, be killed and start over at every restart. A larger file is left
 * as it is, with a warning saying how to convert it offline. A failure is
 * logged and not fatal: the file keeps working, it only does not shrink. */
static void convert_vacuum(sqlite3 *db, const cy_db_schema *s, const char *path)
{
    int mode = 0, pages = 0, free_pages = 0, page_size = 0;
    if (sqlite3_exec(db, "PRAGMA auto_vacuum", int_cb, &mode, NULL) != SQLITE_OK || mode == 2)
        return;
    if (sqlite3_exec(db, "PRAGMA page_count", int_cb, &pages, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA freelist_count", int_cb, &free_pages, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA page_size", int_cb, &page_size, NULL) != SQLITE_OK)
        return;
    long long live = (long long)(pages - free_pages) * page_size;
    if (live > CONVERT_MAX_LIVE) {
        cy_warn(NULL,
                "%s: %s: made without incremental auto-vacuum and too large (%lld MiB) to "
                "convert at start: its free space is not given back until it is converted "
                "with cyan stopped: sqlite3 %s 'PRAGMA auto_vacuum = INCREMENTAL; VACUUM'",
                s->name, path, live >> 20, path);
        return;
    }
    cy_info(NULL, "%s: %s: converting to incremental auto-vacuum (a one-time VACUUM)", s->name,
            path);
    if (exec_rows(db, "PRAGMA auto_vacuum = INCREMENTAL") || exec_rows(db, "VACUUM")) {
        cy_warn(NULL, "%s: %s: VACUUM failed (%s): free space in this file is not reclaimed",
                s->name, path, sqlite3_errmsg(db));
        return;
    }
    sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
}

int cy_db_reclaim(sqlite3 *db, const char *name, unsigned max_pages)
{
    int mode = 0, free_pages = 0;
    if (!sqlite3_get_autocommit(db)) return 0; /* a batch is open: next time */
    if (sqlite3_exec(db, "PRAGMA auto_vacuum", int_cb, &mode, NULL) != SQLITE_OK)
        return cy_db_fail(db, name, "auto_vacuum");
    if (mode != 2) return 0;
    if (sqlite3_exec(db, "PRAGMA freelist_count", int_cb, &free_pages, NULL) != SQLITE_OK)
        return cy_db_fail(db, name, "freelist_count");
    if (free_pages == 0 || max_pages == 0) return free_pages;
    char sql[64];
    snprintf(sql, sizeof(sql), "PRAGMA incremental_vacuum(%u)", max_pages);
    /* sqlite3_exec steps to the end: each step frees one page. */
    if (exec_rows(db, sql)) return cy_db_fail(db, name, "incremental_vacuum");
    int left = 0;
    if (sqlite3_exec(db, "PRAGMA freelist_count", int_cb, &left, NULL) != SQLITE_OK)
        return cy_db_fail(db, name, "freelist_count");
    if (left == 0) sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return left;
}

/* Create a new database file owner-only (0600) whatever the umask: SQLite
 * would create it 0644 less the umask, and gives the -wal and -shm files the
 * mode of the database file. An empty file is a valid empty database. An
 * existing file is let be; other failures are SQLite's to report. */
static void create_private(const char *path)
{
    if (!path[0] || !strcmp(path, ":memory:") || !strncmp(path, "file:", 5)) return;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
}

int cy_db_open(const char *path, bool sync_full, const cy_db_schema *s, const char *const *sql,
               int nst, sqlite3 **db, sqlite3_stmt **st)
{
    create_private(path);
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, db, flags, NULL) != SQLITE_OK)
        return open_fail(*db, s, path, "sqlite3_open_v2");
    sqlite3_extended_result_codes(*db, 1);
    sqlite3_busy_timeout(*db, CY_DB_BUSY_MS);
    /* On a new (empty) file, before WAL: switching to WAL writes the header,
     * after which auto_vacuum can no longer change without a VACUUM. Only
     * then: on an existing file the pragma would wait for the write lock. */
    int pages = -1;
    if (s->incremental_vacuum &&
        (sqlite3_exec(*db, "PRAGMA page_count", int_cb, &pages, NULL) != SQLITE_OK ||
         (pages == 0 &&
          sqlite3_exec(*db, "PRAGMA auto_vacuum = INCREMENTAL", NULL, NULL, NULL) != SQLITE_OK)))
        return open_fail(*db, s, path, "auto_vacuum");
    bool wal = false;
    if (sqlite3_exec(*db, "PRAGMA journal_mode = WAL", wal_cb, &wal, NULL) != SQLITE_OK)
        return open_fail(*db, s, path, "journal_mode");
    if (!wal) cy_warn(NULL, "%s: %s: WAL mode unavailable, using the rollback journal", s->name, path);
    const char *sync = sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL";
    if (sqlite3_exec(*db, sync, NULL, NULL, NULL) != SQLITE_OK)
        return open_fail(*db, s, path, "synchronous");
    char limit[64];
    snprintf(limit, sizeof(limit), "PRAGMA journal_size_limit = %d", CY_DB_WAL_KEEP);
    if (sqlite3_exec(*db, limit, NULL, NULL, NULL) != SQLITE_OK)
        return open_fail(*db, s, path, "journal_size_limit");
    int rc = schema(*db, s, path);
    if (rc) return rc;
    if (s->incremental_vacuum) convert_vacuum(*db, s, path);
    for (int i = 0; i < nst; i++)
        if (sqlite3_prepare_v3(*db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &st[i], NULL) !=
            SQLITE_OK)
            return open_fail(*db, s, path, "prepare");
    return 0;
}
