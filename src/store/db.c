/* db: the one way cyan opens a SQLite file; see db.h. */
#include "store/db.h"

#include "core/cy_err.h"
#include "core/cy_log.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BUSY_TIMEOUT_MS 5000

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
    sqlite3_busy_timeout(*db, BUSY_TIMEOUT_MS);
    bool wal = false;
    if (sqlite3_exec(*db, "PRAGMA journal_mode = WAL", wal_cb, &wal, NULL) != SQLITE_OK)
        return open_fail(*db, s, path, "journal_mode");
    if (!wal) cy_warn(NULL, "%s: %s: WAL mode unavailable, using the rollback journal", s->name, path);
    const char *sync = sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL";
    if (sqlite3_exec(*db, sync, NULL, NULL, NULL) != SQLITE_OK)
        return open_fail(*db, s, path, "synchronous");
    int rc = schema(*db, s, path);
    if (rc) return rc;
    for (int i = 0; i < nst; i++)
        if (sqlite3_prepare_v3(*db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &st[i], NULL) !=
            SQLITE_OK)
            return open_fail(*db, s, path, "prepare");
    return 0;
}
