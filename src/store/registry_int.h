/* registry_int: what the rest of src/store needs from a registry handle
 * beyond store.h, for the webhook definitions (hooks.c) kept in the same
 * file (registry.db) since schema version 4. Internal to src/store.
 *
 * hooks.c owns its SQL (cy_registry_hooks_sql); the registry prepares those
 * statements at open, once the schema is current, and finalizes them at
 * close, so a handle is whole or not open at all. The helpers keep the
 * registry's rules for every statement: a shared read transaction is ended
 * before anything else runs (cy_registry_ready), and a lock met on the file
 * makes that kind of statement (reads or writes) fail at once for a while
 * (cy_registry_fail), so a loop never waits twice in one pass.
 *
 * Ownership: statements and the db belong to the handle (borrowed here).
 * Errors: CY_ESTORE, logged once by cy_registry_fail.
 * Thread: the handle's owner.
 */
#ifndef CY_STORE_REGISTRY_INT_H
#define CY_STORE_REGISTRY_INT_H

#include "store/store.h"

#include <sqlite3.h>
#include <stdbool.h>

/* hooks.c's statements (their SQL is cy_registry_hooks_sql[i]). */
enum {
    CY_RH_COUNT,
    CY_RH_INSERT,
    CY_RH_GET,
    CY_RH_NEXT,
    CY_RH_UPDATE,
    CY_RH_DELETE,
    CY_RH_DELETE_REPLAYS,
    CY_RH_ENABLE,
    CY_RH_EXISTS,
    CY_RH_ROTATE,
    CY_RH_GEN,
    CY_RH_BUMP,
    CY_RH_REPLAY,
    CY_RH_REPLAYS,
    CY_RH_REPLAY_DONE,
    CY_RH_JSON_SHAPE,
    CY_RH_N
};

extern const char *const cy_registry_hooks_sql[CY_RH_N];

/* The prepared statement `which` (CY_RH_*). */
sqlite3_stmt *cy_registry_hook_st(cy_registry *r, int which);
/* Before a statement: end a shared read (cy_registry_end_reads), and
 * CY_ESTORE at once while statements of this kind are backing off after a
 * lock; else 0. */
int cy_registry_ready(cy_registry *r, bool write);
/* Log the handle's last SQLite error for `what`; a lock met starts the
 * back-off of that kind. Returns CY_ESTORE. */
int cy_registry_fail(cy_registry *r, bool write, const char *what);
/* BEGIN IMMEDIATE (after cy_registry_ready(r, true)), COMMIT, and a
 * ROLLBACK that is safe whatever state a failure left. */
int cy_registry_begin(cy_registry *r, const char *what);
int cy_registry_commit(cy_registry *r, const char *what);
void cy_registry_rollback(cy_registry *r);
sqlite3 *cy_registry_db(cy_registry *r);

#endif
