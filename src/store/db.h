/* db: how every cyan SQLite file is opened (internal to src/store).
 *
 * Open or create the file, turn on extended result codes, a busy timeout,
 * WAL and the requested synchronous level, bring the schema to the current
 * version, and prepare the module's statements once. Schema changes happen
 * under BEGIN IMMEDIATE with the version read again inside the lock, so two
 * processes opening a new or old file at once do not both create or migrate
 * it, and a failed step leaves the file as it was. A file already at the
 * current version takes no lock, so opening never waits on another writer.
 *
 * Ownership: on success *db and st[0..nst) belong to the caller, who
 * finalizes them and closes *db (also on failure: whatever was opened is left
 * in *db and st for the caller's ordinary close path).
 * Errors: CY_ESTORE, logged once here with the file name and `what`.
 * Thread: the caller's.
 */
#ifndef CY_STORE_DB_H
#define CY_STORE_DB_H

#include <sqlite3.h>
#include <stdbool.h>

typedef struct cy_db_schema {
    const char *name;     /* for logs: "registry", "store" */
    int version;          /* the current version */
    const char *create;   /* SQL creating the current schema in an empty file */
    /* migrate[v] takes version v to v + 1, for 1 <= v < version. */
    const char *const *migrate;
} cy_db_schema;

int cy_db_open(const char *path, bool sync_full, const cy_db_schema *schema,
               const char *const *sql, int nst, sqlite3 **db, sqlite3_stmt **st);

/* Log db's last error for `what` in module `name`; returns CY_ESTORE. */
int cy_db_fail(sqlite3 *db, const char *name, const char *what);

#endif
