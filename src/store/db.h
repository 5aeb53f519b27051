/* db: how every cyan SQLite file is opened (internal to src/store).
 *
 * Open or create the file, turn on extended result codes, a busy timeout,
 * WAL and the requested synchronous level, bring the schema to the current
 * version, and prepare the module's statements once. The WAL file is cut
 * back to CY_DB_WAL_KEEP bytes after each checkpoint that empties it
 * (journal_size_limit), so one large batch does not leave a large WAL
 * behind for good. Schema changes happen
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
    /* Free pages are given back to the file system in slices
     * (cy_db_reclaim): a new file is made with auto_vacuum = INCREMENTAL,
     * and an older file without it is converted once at open by a VACUUM
     * (only for a file one process owns: it rewrites the whole file). */
    bool incremental_vacuum;
} cy_db_schema;

int cy_db_open(const char *path, bool sync_full, const cy_db_schema *schema,
               const char *const *sql, int nst, sqlite3 **db, sqlite3_stmt **st);

#define CY_DB_WAL_KEEP (4 << 20)

/* How long a statement waits for another process's lock (sqlite3_busy_timeout)
 * unless the module sets its own: long enough for a CLI's short write. A
 * process serving a loop must wait less than its watchdog allows: the
 * registry lowers it in shards (cy_registry_set_busy_timeout). */
#define CY_DB_BUSY_MS 5000

/* Give up to max_pages free pages back to the file system (PRAGMA
 * incremental_vacuum), outside any transaction; when the last free page
 * goes, checkpoint (passive) so the main file shrinks now rather than at
 * the next automatic checkpoint. Returns the free pages left (0: nothing
 * to do, or a file without incremental auto-vacuum), or CY_ESTORE. The
 * cost is about that of writing max_pages pages. */
int cy_db_reclaim(sqlite3 *db, const char *name, unsigned max_pages);

/* Log db's last error for `what` in module `name`; returns CY_ESTORE. */
int cy_db_fail(sqlite3 *db, const char *name, const char *what);

#endif
