/* cy_store: the broker state of one event loop, in one SQLite file (WAL).
 *
 * The idea needed to read this file is group commit. Every statement is
 * prepared once at open and only bound, stepped and reset afterwards. The
 * first write after a commit runs BEGIN IMMEDIATE and sets in_txn; later
 * writes join that transaction and bump `pending`; cy_store_commit, called
 * once per loop pass before any acknowledgement reaches a socket, runs
 * COMMIT. In WAL mode with synchronous=NORMAL a COMMIT is a write(2) to the
 * WAL with no fsync, which survives the process being killed; with
 * synchronous=FULL (sync_full) the WAL is fsynced per commit, which also
 * survives power loss.
 *
 * Any failed write fails its whole batch: the failing call logs and returns
 * CY_ESTORE, and the next cy_store_commit rolls back what the batch still
 * holds and also returns CY_ESTORE, whether SQLite rolled the transaction
 * back under us (it may on I/O errors, a full disk or out of memory) or only
 * that statement failed. The loop cannot undo in memory what the batch
 * recorded, so it must not acknowledge any of it. A failed COMMIT is rolled
 * back for the same reason, so the handle is always left in a clean state
 * (no transaction open).
 *
 * Disk full: a write or COMMIT that failed because the file system is full
 * (SQLITE_FULL, or an I/O error with ENOSPC/EDQUOT) is remembered
 * (cy_store_no_space) until a batch commits. The broker does better than
 * hit that: it asks the file system for its free space (cy_store_space)
 * and estimates what its writes take in between (cy_store_bytes), and
 * refuses new durable work while space is short.
 *
 * cy_store_load reads inside one read transaction, so it sees a single
 * snapshot. Its callbacks may call the write functions (say, to drop an
 * expired session): the first such write turns the read transaction into
 * the pending write transaction, which the loop's next cy_store_commit ends.
 *
 * Encodings: topics and filters are TEXT bound with explicit lengths (SQLite
 * neither checks nor converts UTF-8 here, so they round-trip byte-exactly,
 * and what comes back is NUL-terminated as a bonus); payloads are BLOBs, an
 * empty payload being a zero-length blob, never NULL; props is NULL when
 * empty; subscription identifiers are a blob of 4-byte big-endian values.
 * Message ids are rowids (no AUTOINCREMENT): larger than every live id when
 * assigned, so queue order is id order. Retained rows carry `ts`, the
 * last-writer-wins stamp shards compare; this file only stores it.
 *
 * Cross-shard delivery adds two tables. `outbox` holds, per peer shard, the
 * frames sent to it that it has not acknowledged yet, keyed (peer, seq):
 * they are written in the same batch as the work that produced them, so a
 * frame exists exactly when its work is committed, and an acknowledgement
 * deletes a whole prefix (seq <= upto). `peers` holds one row per peer: the
 * last seq assigned to a frame for it and the last seq applied from it.
 * Sequence numbers are uint64 stored as the int64 with the same bits, so
 * every value round-trips; comparisons and order are SQLite's signed ones,
 * which agree with unsigned order as long as all the values compared are
 * below 2^63 (sequences count from 1 and never get there).
 *
 * Schema versions (PRAGMA user_version): 1 had no retained.ts, outbox or
 * peers; 2 had no retained.owner; 3 had no event log nor webhook state; 4
 * had no presence table; 5 had an index on msgs(client_id, id); 6 is
 * current. A new file gets version 6 directly; an older file is migrated
 * at open in one transaction (all of it or none of it); a newer file is
 * refused.
 *
 * Space: the file is made with auto_vacuum = INCREMENTAL (an older file is
 * converted once at open, see db.c), so the pages that deleted rows free
 * (cleared retained messages, acknowledged outbox frames, ended sessions)
 * go back to the file system through cy_store_reclaim, a slice at a time,
 * instead of staying in the file for good.
 *
 * Every SQLite failure is logged once, where it is detected, and returned
 * as CY_ESTORE.
 */
#include "store/store.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include "store/db.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdint.h>
#include <sys/statvfs.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SCHEMA_VERSION 6
#define PEER_MAX 64 /* peers are 0..PEER_MAX-1 */
/* What a row costs beyond its variable bytes, roughly (keys, integers,
 * b-tree cells), for cy_store_bytes. */
#define CY_STORE_ROW_BYTES 64

/* The tables version 2 added, shared by a new file and the migration. */
#define TABLES_ADDED_V2                                                                            \
    "CREATE TABLE IF NOT EXISTS outbox("                                                           \
    " peer INTEGER NOT NULL,"                                                                      \
    " seq INTEGER NOT NULL,"                                                                       \
    " frame BLOB NOT NULL,"                                                                        \
    " PRIMARY KEY(peer, seq)) WITHOUT ROWID;"                                                      \
    "CREATE TABLE IF NOT EXISTS peers("                                                            \
    " peer INTEGER PRIMARY KEY,"                                                                   \
    " last_sent INTEGER NOT NULL,"                                                                 \
    " last_applied INTEGER NOT NULL);"

/* The tables version 4 added: the event log and webhook delivery state. */
#define TABLES_ADDED_V4                                                                            \
    "CREATE TABLE IF NOT EXISTS events("                                                           \
    " seq INTEGER PRIMARY KEY,"                                                                    \
    " at INTEGER NOT NULL,"                                                                        \
    " topic TEXT NOT NULL,"                                                                        \
    " payload BLOB NOT NULL);"                                                                     \
    "CREATE TABLE IF NOT EXISTS hook_state("                                                       \
    " hook TEXT PRIMARY KEY NOT NULL,"                                                             \
    " cursor INTEGER NOT NULL,"                                                                    \
    " matched INTEGER NOT NULL, delivered INTEGER NOT NULL, dead INTEGER NOT NULL,"                \
    " shown TEXT NOT NULL) WITHOUT ROWID;"                                                         \
    "CREATE TABLE IF NOT EXISTS hook_retry("                                                       \
    " hook TEXT NOT NULL, seq INTEGER NOT NULL,"                                                   \
    " at INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,"                            \
    " attempts INTEGER NOT NULL, next_at INTEGER NOT NULL, trail TEXT NOT NULL,"                   \
    " PRIMARY KEY(hook, seq)) WITHOUT ROWID;"                                                      \
    "CREATE TABLE IF NOT EXISTS hook_dead("                                                        \
    " hook TEXT NOT NULL, seq INTEGER NOT NULL,"                                                   \
    " at INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,"                            \
    " attempts INTEGER NOT NULL, next_at INTEGER NOT NULL, trail TEXT NOT NULL,"                   \
    " PRIMARY KEY(hook, seq)) WITHOUT ROWID;"

/* The table version 5 added: each device's presence as its owner shard
 * last wrote it (device/presence.c). */
#define TABLES_ADDED_V5                                                                            \
    "CREATE TABLE IF NOT EXISTS presence("                                                         \
    " id TEXT PRIMARY KEY NOT NULL,"                                                               \
    " online INTEGER NOT NULL,"                                                                    \
    " protocol TEXT NOT NULL,"                                                                     \
    " last_heard INTEGER NOT NULL,"                                                                \
    " last_rtt INTEGER NOT NULL) WITHOUT ROWID;"

static const char schema_v6[] =
    "CREATE TABLE IF NOT EXISTS sessions("
    " client_id TEXT PRIMARY KEY NOT NULL,"
    " version INTEGER NOT NULL,"
    " expiry INTEGER NOT NULL,"
    " disconnected_at INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS subs("
    " client_id TEXT NOT NULL,"
    " filter TEXT NOT NULL,"
    " opts INTEGER NOT NULL,"
    " sub_id INTEGER NOT NULL,"
    " PRIMARY KEY(client_id, filter)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS msgs("
    " id INTEGER PRIMARY KEY,"
    " client_id TEXT NOT NULL,"
    " topic TEXT NOT NULL,"
    " payload BLOB NOT NULL,"
    " props BLOB,"
    " qos INTEGER NOT NULL,"
    " retain INTEGER NOT NULL,"
    " expiry_at INTEGER NOT NULL,"
    " packet_id INTEGER NOT NULL,"
    " state INTEGER NOT NULL,"
    " sub_ids BLOB);"
    "CREATE TABLE IF NOT EXISTS inq2("
    " client_id TEXT NOT NULL,"
    " packet_id INTEGER NOT NULL,"
    " PRIMARY KEY(client_id, packet_id)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS retained("
    " topic TEXT PRIMARY KEY NOT NULL,"
    " payload BLOB NOT NULL,"
    " props BLOB,"
    " qos INTEGER NOT NULL,"
    " expiry_at INTEGER NOT NULL,"
    " ts INTEGER NOT NULL,"
    " owner TEXT);" TABLES_ADDED_V2 TABLES_ADDED_V4 TABLES_ADDED_V5 "PRAGMA user_version = 6;";

/* Version 1 to 2. Retained messages written before stamps existed get 0,
 * older than any stamp, so the first replicated update of the topic wins. */
static const char migrate_v2[] =
    "ALTER TABLE retained ADD COLUMN ts INTEGER NOT NULL DEFAULT 0;" TABLES_ADDED_V2
    "PRAGMA user_version = 2;";

/* Version 2 to 3: who set each retained message. Rows written before are
 * nobody's (NULL): they count against the node-wide retained limits, not
 * against any client's. */
static const char migrate_v3[] = "ALTER TABLE retained ADD COLUMN owner TEXT;"
                                 "PRAGMA user_version = 3;";

/* Version 3 to 4: the event log and webhook delivery state. */
static const char migrate_v4[] = TABLES_ADDED_V4 "PRAGMA user_version = 4;";

/* Version 4 to 5: presence (last heard, last round trip, the last status
 * event logged). A device without a row has never been written: nothing
 * known, as before. */
static const char migrate_v5[] = TABLES_ADDED_V5 "PRAGMA user_version = 5;";

/* Version 5 to 6: no index on msgs by session. It cost a second B-tree
 * insert and delete per stored delivery, at pages scattered over the
 * sessions, while the table's own inserts all land on its last page (ids
 * increase). Nothing needs it: the load reads the queues in one scan of
 * the table, and a session's rows are deleted by id by whoever holds them
 * (cy_store_session_delete does not touch msgs). */
static const char migrate_v6[] = "DROP INDEX IF EXISTS msgs_client;"
                                 "PRAGMA user_version = 6;";

/* migrations[v] takes a file from version v to v + 1. */
static const char *const migrations[] = {NULL,       migrate_v2, migrate_v3,
                                         migrate_v4, migrate_v5, migrate_v6};

enum {
    ST_BEGIN,
    ST_BEGIN_READ,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_SESSION_PUT,
    ST_SESSION_DEL,
    ST_SESSION_DEL_SUBS,
    ST_SESSION_DEL_INQ2,
    ST_SUB_PUT,
    ST_SUB_DEL,
    ST_MSG_PUT,
    ST_MSG_UPDATE,
    ST_MSG_DEL,
    ST_MSGS_ORPHANS,
    ST_MSGS_ORPHAN_ANY,
    ST_INQ2_PUT,
    ST_INQ2_DEL,
    ST_RETAIN_PUT,
    ST_RETAIN_DEL,
    ST_OUTBOX_PUT,
    ST_OUTBOX_ACK,
    ST_PEER_PUT,
    ST_LOAD_SESSIONS,
    ST_LOAD_SUBS,
    ST_LOAD_MSGS,
    ST_LOAD_INQ2,
    ST_LOAD_RETAINED,
    ST_LOAD_PEERS,
    ST_LOAD_OUTBOX,
    ST_EV_PUT,
    ST_EV_LAST,
    ST_EV_READ,
    ST_EV_GET,
    ST_EV_TRIM,
    ST_EV_NTH,
    ST_EV_TAIL,
    ST_EV_FIRST,
    ST_EV_COUNT_AFTER,
    ST_HS_PUT,
    ST_HS_LOAD,
    ST_HS_DEL,
    ST_HR_PUT,
    ST_HR_DEL,
    ST_HR_LOAD,
    ST_HR_DEL_HOOK,
    ST_HR_GET,
    ST_HD_PUT,
    ST_HD_DEL,
    ST_HD_LIST,
    ST_HD_GET,
    ST_HD_DEL_HOOK,
    ST_HD_SEQS,
    ST_PR_PUT,
    ST_PR_DEL,
    ST_PR_LOAD,
    N_ST
};

static const char *const sql[N_ST] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SESSION_PUT] = "INSERT INTO sessions(client_id, version, expiry, disconnected_at)"
                       " VALUES(?1, ?2, ?3, ?4) ON CONFLICT(client_id) DO UPDATE SET"
                       " version = excluded.version, expiry = excluded.expiry,"
                       " disconnected_at = excluded.disconnected_at",
    [ST_SESSION_DEL] = "DELETE FROM sessions WHERE client_id = ?1",
    [ST_SESSION_DEL_SUBS] = "DELETE FROM subs WHERE client_id = ?1",
    [ST_MSGS_ORPHAN_ANY] =
        "SELECT 1 FROM msgs WHERE client_id NOT IN (SELECT client_id FROM sessions)"
        " LIMIT 1",
    [ST_MSGS_ORPHANS] = "DELETE FROM msgs WHERE client_id NOT IN (SELECT client_id FROM sessions)",
    [ST_SESSION_DEL_INQ2] = "DELETE FROM inq2 WHERE client_id = ?1",
    [ST_SUB_PUT] = "INSERT INTO subs(client_id, filter, opts, sub_id) VALUES(?1, ?2, ?3, ?4)"
                   " ON CONFLICT(client_id, filter) DO UPDATE SET"
                   " opts = excluded.opts, sub_id = excluded.sub_id",
    [ST_SUB_DEL] = "DELETE FROM subs WHERE client_id = ?1 AND filter = ?2",
    [ST_MSG_PUT] = "INSERT INTO msgs(client_id, topic, payload, props, qos, retain, expiry_at,"
                   " packet_id, state, sub_ids) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    [ST_MSG_UPDATE] = "UPDATE msgs SET packet_id = ?2, state = ?3 WHERE id = ?1",
    [ST_MSG_DEL] = "DELETE FROM msgs WHERE id = ?1",
    [ST_INQ2_PUT] = "INSERT OR IGNORE INTO inq2(client_id, packet_id) VALUES(?1, ?2)",
    [ST_INQ2_DEL] = "DELETE FROM inq2 WHERE client_id = ?1 AND packet_id = ?2",
    [ST_RETAIN_PUT] = "INSERT INTO retained(topic, payload, props, qos, expiry_at, ts, owner)"
                      " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(topic) DO UPDATE SET"
                      " payload = excluded.payload, props = excluded.props,"
                      " qos = excluded.qos, expiry_at = excluded.expiry_at, ts = excluded.ts,"
                      " owner = excluded.owner",
    [ST_RETAIN_DEL] = "DELETE FROM retained WHERE topic = ?1",
    /* A frame put twice under one (peer, seq) replaces the first: the same
     * seq is never assigned to two different frames, so this only happens
     * on a retry, and a retry must not fail the batch. */
    [ST_OUTBOX_PUT] = "INSERT OR REPLACE INTO outbox(peer, seq, frame) VALUES(?1, ?2, ?3)",
    [ST_OUTBOX_ACK] = "DELETE FROM outbox WHERE peer = ?1 AND seq <= ?2",
    [ST_PEER_PUT] = "INSERT INTO peers(peer, last_sent, last_applied) VALUES(?1, ?2, ?3)"
                    " ON CONFLICT(peer) DO UPDATE SET"
                    " last_sent = excluded.last_sent, last_applied = excluded.last_applied",
    [ST_LOAD_SESSIONS] = "SELECT client_id, version, expiry, disconnected_at FROM sessions"
                         " ORDER BY client_id",
    [ST_LOAD_SUBS] = "SELECT filter, opts, sub_id FROM subs WHERE client_id = ?1",
    [ST_LOAD_MSGS] = "SELECT id, topic, payload, props, qos, retain, expiry_at, packet_id, state,"
                     " sub_ids, client_id FROM msgs ORDER BY id",
    [ST_LOAD_INQ2] = "SELECT packet_id FROM inq2 WHERE client_id = ?1 ORDER BY packet_id",
    [ST_LOAD_RETAINED] = "SELECT topic, payload, props, qos, expiry_at, ts, owner FROM retained",
    [ST_LOAD_PEERS] = "SELECT peer, last_sent, last_applied FROM peers ORDER BY peer",
    [ST_LOAD_OUTBOX] = "SELECT peer, seq, frame FROM outbox ORDER BY peer, seq",
    [ST_EV_PUT] = "INSERT INTO events(seq, at, topic, payload) VALUES(?1, ?2, ?3, ?4)",
    [ST_EV_LAST] = "SELECT max(seq) FROM events",
    [ST_EV_READ] =
        "SELECT seq, at, topic, payload FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    [ST_EV_GET] = "SELECT seq, at, topic, payload FROM events WHERE seq = ?1",
    /* The newest event always stays: it carries the sequence across a
     * restart (cy_store_event_append never goes below it). */
    [ST_EV_TRIM] = "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq < ?1"
                   " AND (at < ?2 OR seq <= ?4) AND seq < (SELECT max(seq) FROM events)"
                   " ORDER BY seq LIMIT ?3)",
    [ST_EV_NTH] = "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?1",
    [ST_EV_TAIL] = "SELECT seq, at, topic, payload FROM events ORDER BY seq DESC LIMIT ?1",
    [ST_EV_FIRST] = "SELECT min(seq), count(*) FROM events",
    /* Counted up to a million: past it the figure says "at least". */
    [ST_EV_COUNT_AFTER] =
        "SELECT count(*) FROM (SELECT 1 FROM events WHERE seq > ?1 LIMIT 1000000)",
    [ST_HS_PUT] = "INSERT INTO hook_state(hook, cursor, matched, delivered, dead, shown)"
                  " VALUES(?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(hook) DO UPDATE SET"
                  " cursor = excluded.cursor, matched = excluded.matched,"
                  " delivered = excluded.delivered, dead = excluded.dead, shown = excluded.shown",
    [ST_HS_LOAD] = "SELECT hook, cursor, matched, delivered, dead, shown FROM hook_state",
    [ST_HS_DEL] = "DELETE FROM hook_state WHERE hook = ?1",
    [ST_HR_PUT] = "INSERT OR REPLACE INTO hook_retry(hook, seq, at, topic, payload, attempts,"
                  " next_at, trail) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [ST_HR_DEL] = "DELETE FROM hook_retry WHERE hook = ?1 AND seq = ?2",
    [ST_HR_LOAD] = "SELECT hook, seq, at, topic, payload, attempts, next_at, trail FROM hook_retry"
                   " ORDER BY hook, seq",
    [ST_HR_DEL_HOOK] = "DELETE FROM hook_retry WHERE hook = ?1",
    [ST_HR_GET] = "SELECT hook, seq, at, topic, payload, attempts, next_at, trail FROM hook_retry"
                  " WHERE hook = ?1 AND seq = ?2",
    [ST_HD_PUT] = "INSERT OR REPLACE INTO hook_dead(hook, seq, at, topic, payload, attempts,"
                  " next_at, trail) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [ST_HD_DEL] = "DELETE FROM hook_dead WHERE hook = ?1 AND seq = ?2",
    [ST_HD_LIST] = "SELECT hook, seq, at, topic, payload, attempts, next_at, trail FROM hook_dead"
                   " WHERE hook = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    [ST_HD_GET] = "SELECT hook, seq, at, topic, payload, attempts, next_at, trail FROM hook_dead"
                  " WHERE hook = ?1 AND seq = ?2",
    [ST_HD_DEL_HOOK] = "DELETE FROM hook_dead WHERE hook = ?1",
    [ST_HD_SEQS] = "SELECT hook, seq FROM hook_dead WHERE seq > ?1",
    [ST_PR_PUT] = "INSERT INTO presence(id, online, protocol, last_heard, last_rtt)"
                  " VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(id) DO UPDATE SET"
                  " online = excluded.online, protocol = excluded.protocol,"
                  " last_heard = excluded.last_heard, last_rtt = excluded.last_rtt",
    [ST_PR_DEL] = "DELETE FROM presence WHERE id = ?1",
    [ST_PR_LOAD] = "SELECT id, online, protocol, last_heard, last_rtt FROM presence ORDER BY id",
};

struct cy_store {
    sqlite3 *db;
    sqlite3_stmt *st[N_ST];
    size_t pending;       /* writes since the last commit */
    bool in_txn;          /* a write transaction is open (ours, or load's read one joined) */
    bool lost;            /* a write of this batch failed: the commit must fail it */
    bool loading;         /* inside cy_store_load (it is not re-entrant) */
    bool no_space;        /* a write or commit of this batch failed for lack of disk space */
    uint64_t bytes;       /* estimate of the bytes all writes so far have asked for */
    uint64_t ev_last;     /* the event log's last sequence number (0: none yet) */
    uint64_t ev_appends;  /* events appended since open */
    uint64_t ev_cut;      /* trim's cached cut (see cy_store_events_trim) */
    uint64_t ev_cut_keep; /* the keep it was found for */
    uint64_t ev_cut_mark; /* ev_appends when it was found; 0 = never */
    bool readonly;        /* cy_store_open_reader: only the read calls */
    uint32_t *ids;        /* load's scratch for decoded subscription identifiers */
    size_t ids_cap;       /* entries */
};

/* Logs the connection's last error once and returns CY_ESTORE. */
static int db_fail(sqlite3 *db, const char *what)
{
    return cy_db_fail(db, "store", what);
}

static void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Whether the connection's last error is the file system being full:
 * SQLite's own SQLITE_FULL, or an I/O error whose errno was ENOSPC (or
 * EDQUOT, a quota: the same thing for us). */
static bool out_of_space(sqlite3 *db)
{
    int e = sqlite3_extended_errcode(db);
    if ((e & 0xff) == SQLITE_FULL) return true;
    if ((e & 0xff) != SQLITE_IOERR) return false;
    int sys = sqlite3_system_errno(db);
    return sys == ENOSPC || sys == EDQUOT;
}

/* Steps a statement that returns no rows, then resets it. A failure for
 * lack of space is remembered for cy_store_no_space. */
static int step_done(cy_store *s, int which, const char *what)
{
    sqlite3_stmt *st = s->st[which];
    int rc = 0;
    if (sqlite3_step(st) != SQLITE_DONE) {
        if (out_of_space(s->db)) s->no_space = true;
        rc = db_fail(s->db, what);
    }
    done(st);
    return rc;
}

/* A zero-length blob must stay a blob: sqlite3_bind_blob with len 0 and a
 * NULL pointer would bind SQL NULL. */
static int bind_bytes(sqlite3_stmt *st, int i, const void *p, size_t n)
{
    if (n == 0) return sqlite3_bind_zeroblob(st, i, 0);
    return sqlite3_bind_blob64(st, i, p, n, SQLITE_STATIC);
}

/* Empty optional bytes (props, sub ids) are NULL. */
static int bind_opt_bytes(sqlite3_stmt *st, int i, const void *p, size_t n)
{
    if (n == 0 || !p) return sqlite3_bind_null(st, i);
    return sqlite3_bind_blob64(st, i, p, n, SQLITE_STATIC);
}

static int bind_str(sqlite3_stmt *st, int i, const char *p, size_t n)
{
    return sqlite3_bind_text64(st, i, n ? p : "", n, SQLITE_STATIC, SQLITE_UTF8);
}

/* ---- open / close ---- */

static int ev_last_load(cy_store *s);

int cy_store_open(const char *path, bool sync_full, cy_store **out)
{
    if (!path || !out) return CY_EINVAL;
    *out = NULL;
    cy_store *s = cy_calloc(1, sizeof(*s));
    if (!s) return CY_ENOMEM;
    static const cy_db_schema schema = {"store", SCHEMA_VERSION, schema_v6, migrations, true};
    int rc = cy_db_open(path, sync_full, &schema, sql, N_ST, &s->db, s->st);
    if (!rc) rc = ev_last_load(s);
    if (rc) goto fail;
    *out = s;
    return 0;
fail:
    cy_store_close(s);
    return rc;
}

void cy_store_close(cy_store *s)
{
    if (!s) return;
    if (s->in_txn || s->lost) cy_store_commit(s); /* logs its own failure */
    for (int i = 0; i < N_ST; i++)
        sqlite3_finalize(s->st[i]);
    if (s->db && sqlite3_close(s->db) != SQLITE_OK) db_fail(s->db, "close");
    cy_free(s->ids);
    cy_free(s);
}

/* ---- group commit ---- */

/* Before a write: open the batch's transaction unless one is open. Inside
 * cy_store_load a read transaction is open; the write joins it. */
static int write_begin(cy_store *s)
{
    if (s->in_txn) return 0;
    if (sqlite3_get_autocommit(s->db) && step_done(s, ST_BEGIN, "begin")) {
        /* The write the caller meant is not done: the batch has failed. */
        s->lost = true;
        s->pending++;
        return CY_ESTORE;
    }
    s->in_txn = true;
    return 0;
}

/* After a write: count it (with a rough size, see cy_store_bytes). A
 * failed write fails the whole batch: the callers go on (they cannot undo
 * what they did in memory), so it is cy_store_commit that says the batch is
 * not durable, and nothing of it may be acknowledged. That holds whether
 * SQLite rolled the transaction back under us (it may on I/O errors, a full
 * disk, out of memory) or only this statement failed. The failed write
 * counts as pending, so that the loop commits and hears of it. */
static int write_end(cy_store *s, int rc, size_t bytes)
{
    if (rc == 0) {
        s->pending++;
        s->bytes += bytes + CY_STORE_ROW_BYTES;
        return 0;
    }
    if (s->in_txn && sqlite3_get_autocommit(s->db)) {
        s->in_txn = false;
        if (s->pending)
            cy_error(NULL, "store: transaction rolled back, %zu uncommitted writes lost",
                     s->pending);
    }
    s->lost = true;
    s->pending++;
    return rc;
}

int cy_store_commit(cy_store *s)
{
    int rc = 0;
    if (s->lost) {
        /* Logged when it happened. The whole batch since the last commit
         * fails together: writes made after the loss are dropped too. */
        rc = CY_ESTORE;
        if (s->in_txn && !sqlite3_get_autocommit(s->db)) step_done(s, ST_ROLLBACK, "rollback");
    } else if (s->in_txn && !sqlite3_get_autocommit(s->db)) {
        rc = step_done(s, ST_COMMIT, "commit");
        if (rc && !sqlite3_get_autocommit(s->db)) step_done(s, ST_ROLLBACK, "rollback");
    }
    /* A batch that committed proves there was room for it. */
    if (rc == 0) s->no_space = false;
    s->lost = false;
    s->in_txn = false;
    s->pending = 0;
    return rc;
}

bool cy_store_no_space(const cy_store *s)
{
    return s->no_space;
}

uint64_t cy_store_bytes(const cy_store *s)
{
    return s->bytes;
}

int cy_store_space(const cy_store *s, uint64_t *free_bytes)
{
    if (!s || !free_bytes) return CY_EINVAL;
    /* The file system of the main file (the WAL and the shm beside it are
     * on the same one). What an unprivileged process may use: f_bavail. */
    const char *path = sqlite3_db_filename(s->db, "main");
    struct statvfs v;
    if (!path || !*path || statvfs(path, &v) != 0) return path && *path ? -errno : CY_EINVAL;
    *free_bytes = (uint64_t)v.f_bavail * (uint64_t)(v.f_frsize ? v.f_frsize : v.f_bsize);
    return 0;
}

size_t cy_store_pending(const cy_store *s)
{
    return s->pending;
}

/* ---- writes ---- */

int cy_store_session_put(cy_store *s, const cy_store_session *sess)
{
    if (!sess || !sess->client_id) return CY_EINVAL;
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_SESSION_PUT];
    if (sqlite3_bind_text(st, 1, sess->client_id, -1, SQLITE_STATIC) ||
        sqlite3_bind_int(st, 2, sess->version) || sqlite3_bind_int64(st, 3, sess->expiry) ||
        sqlite3_bind_int64(st, 4, sess->disconnected_at)) {
        done(st);
        return write_end(s, db_fail(s->db, "session_put"), 0);
    }
    return write_end(s, step_done(s, ST_SESSION_PUT, "session_put"), 0);
}

int cy_store_session_delete(cy_store *s, const char *client_id)
{
    if (!client_id) return CY_EINVAL;
    static const int del[] = {ST_SESSION_DEL_SUBS, ST_SESSION_DEL_INQ2, ST_SESSION_DEL};
    int rc = write_begin(s);
    if (rc) return rc;
    /* All three run in the batch's transaction, so the deletion is atomic. */
    for (size_t i = 0; i < sizeof(del) / sizeof(del[0]) && !rc; i++) {
        sqlite3_stmt *st = s->st[del[i]];
        if (sqlite3_bind_text(st, 1, client_id, -1, SQLITE_STATIC)) {
            done(st);
            rc = db_fail(s->db, "session_delete");
        } else {
            rc = step_done(s, del[i], "session_delete");
        }
    }
    return write_end(s, rc, 0);
}

int cy_store_sub_put(cy_store *s, const char *client_id, const char *filter, size_t filter_len,
                     uint8_t opts, uint32_t sub_id)
{
    if (!client_id || (!filter && filter_len)) return CY_EINVAL;
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_SUB_PUT];
    if (sqlite3_bind_text(st, 1, client_id, -1, SQLITE_STATIC) ||
        bind_str(st, 2, filter, filter_len) || sqlite3_bind_int(st, 3, opts) ||
        sqlite3_bind_int64(st, 4, sub_id)) {
        done(st);
        return write_end(s, db_fail(s->db, "sub_put"), 0);
    }
    return write_end(s, step_done(s, ST_SUB_PUT, "sub_put"), filter_len);
}

int cy_store_sub_delete(cy_store *s, const char *client_id, const char *filter, size_t filter_len)
{
    if (!client_id || (!filter && filter_len)) return CY_EINVAL;
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_SUB_DEL];
    if (sqlite3_bind_text(st, 1, client_id, -1, SQLITE_STATIC) ||
        bind_str(st, 2, filter, filter_len)) {
        done(st);
        return write_end(s, db_fail(s->db, "sub_delete"), 0);
    }
    return write_end(s, step_done(s, ST_SUB_DEL, "sub_delete"), 0);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool msg_valid(const cy_store_msg *m)
{
    return m && (m->topic || !m->topic_len) && (m->payload || !m->payload_len) &&
           (m->props || !m->props_len) && (m->sub_ids || !m->n_sub_ids) &&
           (m->owner || !m->owner_len);
}

int cy_store_msg_put(cy_store *s, const char *client_id, cy_store_msg *m)
{
    if (!client_id || !msg_valid(m)) return CY_EINVAL;
    /* Subscription ids: a few in practice, so usually no allocation. */
    uint8_t small[64];
    uint8_t *ids = small;
    size_t ids_len = (size_t)m->n_sub_ids * 4;
    if (ids_len > sizeof(small) && !(ids = cy_malloc(ids_len))) return CY_ENOMEM;
    for (uint32_t i = 0; i < m->n_sub_ids; i++)
        put_be32(ids + 4 * (size_t)i, m->sub_ids[i]);

    int rc = write_begin(s);
    if (rc) goto out;
    sqlite3_stmt *st = s->st[ST_MSG_PUT];
    if (sqlite3_bind_text(st, 1, client_id, -1, SQLITE_STATIC) ||
        bind_str(st, 2, m->topic, m->topic_len) || bind_bytes(st, 3, m->payload, m->payload_len) ||
        bind_opt_bytes(st, 4, m->props, m->props_len) || sqlite3_bind_int(st, 5, m->qos) ||
        sqlite3_bind_int(st, 6, m->retain) || sqlite3_bind_int64(st, 7, m->expiry_at) ||
        sqlite3_bind_int(st, 8, m->packet_id) || sqlite3_bind_int(st, 9, m->state) ||
        bind_opt_bytes(st, 10, ids, ids_len)) {
        done(st);
        rc = write_end(s, db_fail(s->db, "msg_put"), 0);
        goto out;
    }
    rc = write_end(s, step_done(s, ST_MSG_PUT, "msg_put"),
                   m->topic_len + m->payload_len + m->props_len + ids_len);
    if (!rc) m->id = sqlite3_last_insert_rowid(s->db);
out:
    if (ids != small) cy_free(ids);
    return rc;
}

int cy_store_msg_update(cy_store *s, int64_t id, uint16_t packet_id, uint8_t state)
{
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_MSG_UPDATE];
    if (sqlite3_bind_int64(st, 1, id) || sqlite3_bind_int(st, 2, packet_id) ||
        sqlite3_bind_int(st, 3, state)) {
        done(st);
        return write_end(s, db_fail(s->db, "msg_update"), 0);
    }
    rc = write_end(s, step_done(s, ST_MSG_UPDATE, "msg_update"), 0);
    /* An update that matched nothing is a caller bug worth reporting; the
     * write still counts as pending (the transaction is open). */
    if (!rc && sqlite3_changes(s->db) == 0) return CY_ENOENT;
    return rc;
}

int cy_store_msg_delete(cy_store *s, int64_t id)
{
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_MSG_DEL];
    if (sqlite3_bind_int64(st, 1, id)) {
        done(st);
        return write_end(s, db_fail(s->db, "msg_delete"), 0);
    }
    return write_end(s, step_done(s, ST_MSG_DEL, "msg_delete"), 0);
}

static int inq2_write(cy_store *s, int which, const char *what, const char *client_id,
                      uint16_t packet_id)
{
    if (!client_id) return CY_EINVAL;
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[which];
    if (sqlite3_bind_text(st, 1, client_id, -1, SQLITE_STATIC) ||
        sqlite3_bind_int(st, 2, packet_id)) {
        done(st);
        return write_end(s, db_fail(s->db, what), 0);
    }
    return write_end(s, step_done(s, which, what), 0);
}

int cy_store_inq2_put(cy_store *s, const char *client_id, uint16_t packet_id)
{
    return inq2_write(s, ST_INQ2_PUT, "inq2_put", client_id, packet_id);
}

int cy_store_inq2_delete(cy_store *s, const char *client_id, uint16_t packet_id)
{
    return inq2_write(s, ST_INQ2_DEL, "inq2_delete", client_id, packet_id);
}

int cy_store_retain_put(cy_store *s, const cy_store_msg *m)
{
    if (!msg_valid(m)) return CY_EINVAL;
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_RETAIN_PUT];
    if (bind_str(st, 1, m->topic, m->topic_len) || bind_bytes(st, 2, m->payload, m->payload_len) ||
        bind_opt_bytes(st, 3, m->props, m->props_len) || sqlite3_bind_int(st, 4, m->qos) ||
        sqlite3_bind_int64(st, 5, m->expiry_at) || sqlite3_bind_int64(st, 6, m->ts) ||
        (m->owner_len ? bind_str(st, 7, m->owner, m->owner_len) : sqlite3_bind_null(st, 7))) {
        done(st);
        return write_end(s, db_fail(s->db, "retain_put"), 0);
    }
    return write_end(s, step_done(s, ST_RETAIN_PUT, "retain_put"),
                     m->topic_len + m->payload_len + m->props_len + m->owner_len);
}

int cy_store_retain_delete(cy_store *s, const char *topic, size_t topic_len)
{
    if (!topic && topic_len) return CY_EINVAL;
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_RETAIN_DEL];
    if (bind_str(st, 1, topic, topic_len)) {
        done(st);
        return write_end(s, db_fail(s->db, "retain_delete"), 0);
    }
    return write_end(s, step_done(s, ST_RETAIN_DEL, "retain_delete"), 0);
}

/* ---- space ---- */

int cy_store_reclaim(cy_store *s, unsigned max_pages)
{
    if (!s || s->in_txn || s->loading) return 0; /* between batches only */
    return cy_db_reclaim(s->db, "store", max_pages);
}

/* ---- cross-shard delivery ---- */

/* uint64 sequence numbers as SQLite's int64, bit for bit (the conversion is
 * two's complement on every compiler cyan supports). */
static int bind_u64(sqlite3_stmt *st, int i, uint64_t v)
{
    return sqlite3_bind_int64(st, i, (sqlite3_int64)v);
}

static uint64_t col_u64(sqlite3_stmt *st, int i)
{
    return (uint64_t)sqlite3_column_int64(st, i);
}

int cy_store_outbox_put(cy_store *s, unsigned peer, uint64_t seq, const uint8_t *frame, size_t len)
{
    if (peer >= PEER_MAX || (!frame && len)) return CY_EINVAL;
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_OUTBOX_PUT];
    if (sqlite3_bind_int(st, 1, (int)peer) || bind_u64(st, 2, seq) ||
        bind_bytes(st, 3, frame, len)) {
        done(st);
        return write_end(s, db_fail(s->db, "outbox_put"), 0);
    }
    return write_end(s, step_done(s, ST_OUTBOX_PUT, "outbox_put"), len);
}

int cy_store_outbox_ack(cy_store *s, unsigned peer, uint64_t upto)
{
    if (peer >= PEER_MAX) return CY_EINVAL;
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_OUTBOX_ACK];
    if (sqlite3_bind_int(st, 1, (int)peer) || bind_u64(st, 2, upto)) {
        done(st);
        return write_end(s, db_fail(s->db, "outbox_ack"), 0);
    }
    return write_end(s, step_done(s, ST_OUTBOX_ACK, "outbox_ack"), 0);
}

int cy_store_peer_put(cy_store *s, unsigned peer, uint64_t last_sent, uint64_t last_applied)
{
    if (peer >= PEER_MAX) return CY_EINVAL;
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_PEER_PUT];
    if (sqlite3_bind_int(st, 1, (int)peer) || bind_u64(st, 2, last_sent) ||
        bind_u64(st, 3, last_applied)) {
        done(st);
        return write_end(s, db_fail(s->db, "peer_put"), 0);
    }
    return write_end(s, step_done(s, ST_PEER_PUT, "peer_put"), 0);
}

/* ---- load ---- */

static const uint8_t empty[1];

/* Column i as bytes: never NULL, even when empty (sqlite3_column_blob
 * returns NULL for a zero-length value). */
static const uint8_t *col_bytes(sqlite3_stmt *st, int i, size_t *len)
{
    const uint8_t *p = sqlite3_column_blob(st, i);
    *len = (size_t)sqlite3_column_bytes(st, i);
    return p && *len ? p : empty;
}

static const char *col_str(sqlite3_stmt *st, int i, size_t *len)
{
    const char *p = (const char *)sqlite3_column_text(st, i);
    *len = (size_t)sqlite3_column_bytes(st, i);
    return p ? p : "";
}

/* Decodes the sub_ids blob of column i into s->ids. */
static int col_sub_ids(cy_store *s, sqlite3_stmt *st, int i, cy_store_msg *m)
{
    size_t len;
    const uint8_t *p = col_bytes(st, i, &len);
    m->sub_ids = NULL;
    m->n_sub_ids = 0;
    if (len == 0) return 0;
    if (len % 4) {
        cy_error(NULL, "store: load: message %lld has a corrupt sub_ids blob (%zu bytes)",
                 (long long)m->id, len);
        return CY_ESTORE;
    }
    size_t n = len / 4;
    if (n > s->ids_cap) {
        uint32_t *ids = cy_realloc(s->ids, n * sizeof(*ids));
        if (!ids) return CY_ENOMEM;
        s->ids = ids;
        s->ids_cap = n;
    }
    for (size_t k = 0; k < n; k++)
        s->ids[k] = get_be32(p + 4 * k);
    m->sub_ids = s->ids;
    m->n_sub_ids = (uint32_t)n;
    return 0;
}

/* The end of a row loop: rc is the callback's (or a decode) result, sr the
 * last sqlite3_step result. */
static int rows_end(cy_store *s, sqlite3_stmt *st, int rc, int sr, const char *what)
{
    if (rc == 0 && sr != SQLITE_DONE) rc = db_fail(s->db, what);
    done(st);
    return rc;
}

static int load_sessions(cy_store *s, const cy_store_loader *l, void *ctx)
{
    sqlite3_stmt *st = s->st[ST_LOAD_SESSIONS];
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        size_t len;
        cy_store_session sess = {
            .client_id = col_str(st, 0, &len),
            .version = (uint8_t)sqlite3_column_int(st, 1),
            .expiry = (uint32_t)sqlite3_column_int64(st, 2),
            .disconnected_at = sqlite3_column_int64(st, 3),
        };
        rc = l->session(ctx, &sess);
    }
    return rows_end(s, st, rc, sr, "load sessions");
}

static int load_subs(cy_store *s, const cy_store_loader *l, void *ctx, const char *client_id)
{
    sqlite3_stmt *st = s->st[ST_LOAD_SUBS];
    if (sqlite3_bind_text(st, 1, client_id, -1, SQLITE_STATIC)) return db_fail(s->db, "load subs");
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        size_t len;
        const char *filter = col_str(st, 0, &len);
        rc = l->sub(ctx, client_id, filter, (uint8_t)sqlite3_column_int(st, 1),
                    (uint32_t)sqlite3_column_int64(st, 2));
    }
    return rows_end(s, st, rc, sr, "load subs");
}

/* Every session's queue in one scan of msgs, in id order (so each queue in
 * its order). Rows of no session were left by a session deleted at a time
 * its rows were not all known (cy_store_session_delete leaves msgs to the
 * caller): if there are any, they are deleted first, which makes this
 * load's read transaction the pending batch. */
static int load_msgs(cy_store *s, const cy_store_loader *l, void *ctx)
{
    sqlite3_stmt *st = s->st[ST_MSGS_ORPHAN_ANY];
    int sr = sqlite3_step(st), rc = 0;
    sqlite3_reset(st);
    if (sr != SQLITE_ROW && sr != SQLITE_DONE) return db_fail(s->db, "msgs orphans");
    if (sr == SQLITE_ROW && !s->readonly) {
        rc = write_begin(s);
        if (!rc) rc = write_end(s, step_done(s, ST_MSGS_ORPHANS, "msgs orphans"), 0);
        if (rc) return rc;
        cy_warn(NULL, "store: deleted %d queued message(s) of no session", sqlite3_changes(s->db));
    }
    st = s->st[ST_LOAD_MSGS];
    sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        cy_store_msg m = {.id = sqlite3_column_int64(st, 0)};
        m.topic = col_str(st, 1, &m.topic_len);
        m.payload = col_bytes(st, 2, &m.payload_len);
        m.props = col_bytes(st, 3, &m.props_len);
        if (!m.props_len) m.props = NULL;
        m.qos = (uint8_t)sqlite3_column_int(st, 4);
        m.retain = sqlite3_column_int(st, 5) != 0;
        m.expiry_at = sqlite3_column_int64(st, 6);
        m.packet_id = (uint16_t)sqlite3_column_int(st, 7);
        m.state = (uint8_t)sqlite3_column_int(st, 8);
        rc = col_sub_ids(s, st, 9, &m);
        size_t len;
        const char *client_id = col_str(st, 10, &len);
        if (!rc) rc = l->msg(ctx, client_id, &m);
    }
    return rows_end(s, st, rc, sr, "load msgs");
}

static int load_inq2(cy_store *s, const cy_store_loader *l, void *ctx, const char *client_id)
{
    sqlite3_stmt *st = s->st[ST_LOAD_INQ2];
    if (sqlite3_bind_text(st, 1, client_id, -1, SQLITE_STATIC)) return db_fail(s->db, "load inq2");
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW)
        rc = l->inq2(ctx, client_id, (uint16_t)sqlite3_column_int(st, 0));
    return rows_end(s, st, rc, sr, "load inq2");
}

/* Second pass over the sessions: each one's subscriptions and inq2. */
static int load_session_state(cy_store *s, const cy_store_loader *l, void *ctx)
{
    sqlite3_stmt *st = s->st[ST_LOAD_SESSIONS];
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        size_t len;
        /* Valid until this statement steps again, whatever the inner
         * statements and the callbacks' writes do. */
        const char *client_id = col_str(st, 0, &len);
        if (l->sub) rc = load_subs(s, l, ctx, client_id);
        if (!rc && l->inq2) rc = load_inq2(s, l, ctx, client_id);
    }
    return rows_end(s, st, rc, sr, "load sessions");
}

static int load_retained(cy_store *s, const cy_store_loader *l, void *ctx)
{
    sqlite3_stmt *st = s->st[ST_LOAD_RETAINED];
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        cy_store_msg m = {.retain = true};
        m.topic = col_str(st, 0, &m.topic_len);
        m.payload = col_bytes(st, 1, &m.payload_len);
        m.props = col_bytes(st, 2, &m.props_len);
        if (!m.props_len) m.props = NULL;
        m.qos = (uint8_t)sqlite3_column_int(st, 3);
        m.expiry_at = sqlite3_column_int64(st, 4);
        m.ts = sqlite3_column_int64(st, 5);
        if (sqlite3_column_type(st, 6) != SQLITE_NULL) m.owner = col_str(st, 6, &m.owner_len);
        rc = l->retained(ctx, &m);
    }
    return rows_end(s, st, rc, sr, "load retained");
}

static int load_peers(cy_store *s, const cy_store_loader *l, void *ctx)
{
    sqlite3_stmt *st = s->st[ST_LOAD_PEERS];
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW)
        rc = l->peer(ctx, (unsigned)sqlite3_column_int(st, 0), col_u64(st, 1), col_u64(st, 2));
    return rows_end(s, st, rc, sr, "load peers");
}

static int load_outbox(cy_store *s, const cy_store_loader *l, void *ctx)
{
    sqlite3_stmt *st = s->st[ST_LOAD_OUTBOX];
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        size_t len;
        const uint8_t *frame = col_bytes(st, 2, &len);
        rc = l->outbox(ctx, (unsigned)sqlite3_column_int(st, 0), col_u64(st, 1), frame, len);
    }
    return rows_end(s, st, rc, sr, "load outbox");
}

int cy_store_load(cy_store *s, const cy_store_loader *l, void *ctx)
{
    if (!l) return CY_EINVAL;
    if (s->loading) return CY_EBUSY; /* its statements are in use */
    /* One read transaction: one consistent snapshot for the whole load. */
    bool opened = sqlite3_get_autocommit(s->db);
    if (opened && step_done(s, ST_BEGIN_READ, "load begin")) return CY_ESTORE;
    s->loading = true;
    int rc = 0;
    if (l->session) rc = load_sessions(s, l, ctx);
    if (!rc && (l->sub || l->inq2)) rc = load_session_state(s, l, ctx);
    if (!rc && l->msg) rc = load_msgs(s, l, ctx);
    if (!rc && l->retained) rc = load_retained(s, l, ctx);
    if (!rc && l->peer) rc = load_peers(s, l, ctx);
    if (!rc && l->outbox) rc = load_outbox(s, l, ctx);
    s->loading = false;
    /* End the read transaction unless a callback's write made it the
     * pending batch (then the loop's next cy_store_commit ends it). */
    if (opened && !s->in_txn && !sqlite3_get_autocommit(s->db)) {
        int crc = step_done(s, ST_COMMIT, "load end");
        if (!rc) rc = crc;
    }
    return rc;
}

/* ---- presence ---- */

int cy_store_presence_put(cy_store *s, const cy_store_presence *p)
{
    if (!s || !p || !p->id || s->readonly) return CY_EINVAL;
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_PR_PUT];
    const char *proto = p->protocol ? p->protocol : "";
    if (sqlite3_bind_text(st, 1, p->id, -1, SQLITE_STATIC) ||
        sqlite3_bind_int(st, 2, p->online ? 1 : 0) ||
        sqlite3_bind_text(st, 3, proto, -1, SQLITE_STATIC) ||
        sqlite3_bind_int64(st, 4, p->last_heard) || sqlite3_bind_int64(st, 5, p->last_rtt)) {
        done(st);
        return write_end(s, db_fail(s->db, "presence_put"), 0);
    }
    return write_end(s, step_done(s, ST_PR_PUT, "presence_put"), strlen(p->id) + strlen(proto));
}

int cy_store_presence_delete(cy_store *s, const char *id)
{
    if (!s || !id || s->readonly) return CY_EINVAL;
    int rc = write_begin(s);
    if (rc) return rc;
    sqlite3_stmt *st = s->st[ST_PR_DEL];
    if (sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC)) {
        done(st);
        return write_end(s, db_fail(s->db, "presence_delete"), 0);
    }
    return write_end(s, step_done(s, ST_PR_DEL, "presence_delete"), 0);
}

int cy_store_presence_load(cy_store *s, int (*fn)(void *ctx, const cy_store_presence *p), void *ctx)
{
    if (!s || !fn) return CY_EINVAL;
    if (s->loading) return CY_EBUSY;
    sqlite3_stmt *st = s->st[ST_PR_LOAD];
    s->loading = true;
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        size_t len;
        cy_store_presence p = {
            .id = col_str(st, 0, &len),
            .online = sqlite3_column_int(st, 1) != 0,
            .protocol = col_str(st, 2, &len),
            .last_heard = sqlite3_column_int64(st, 3),
            .last_rtt = sqlite3_column_int64(st, 4),
        };
        rc = fn(ctx, &p);
    }
    s->loading = false;
    return rows_end(s, st, rc, sr, "load presence");
}

/* ---- the event log ---- */

/* The open's own step: read the log's last sequence number. */
static int ev_last_load(cy_store *s)
{
    sqlite3_stmt *st = s->st[ST_EV_LAST];
    int sr = sqlite3_step(st);
    if (sr == SQLITE_ROW) s->ev_last = col_u64(st, 0);
    done(st);
    return sr == SQLITE_ROW ? 0 : db_fail(s->db, "event last");
}

uint64_t cy_store_event_last(const cy_store *s)
{
    return s->ev_last;
}

int cy_store_event_append(cy_store *s, int64_t at, const char *topic, size_t topic_len,
                          const uint8_t *payload, size_t payload_len, uint64_t *seq_out)
{
    if (!s || !topic || (!payload && payload_len) || s->readonly) return CY_EINVAL;
    /* Ordered and unique even when the wall clock steps back: never below
     * the last number given (which outlives restarts in the log). Numbers
     * stay below 2^63, where SQLite's signed order is ours (bind_u64): an
     * `at` whose microseconds would not fit is refused rather than wrapped,
     * since one wrapped number sorts before all the others for good. */
    if (at > INT64_MAX / 1000) return CY_ERANGE;
    uint64_t now_us = at > 0 ? (uint64_t)at * 1000 : 0;
    uint64_t seq = s->ev_last + 1 > now_us ? s->ev_last + 1 : now_us;
    if (seq > INT64_MAX) return CY_ERANGE;
    if (write_begin(s)) return CY_ESTORE;
    sqlite3_stmt *st = s->st[ST_EV_PUT];
    if (bind_u64(st, 1, seq) || sqlite3_bind_int64(st, 2, at) ||
        bind_str(st, 3, topic, topic_len) || bind_bytes(st, 4, payload, payload_len)) {
        done(st);
        return write_end(s, db_fail(s->db, "event append"), 0);
    }
    int rc = write_end(s, step_done(s, ST_EV_PUT, "event append"), topic_len + payload_len);
    if (rc) return rc;
    s->ev_last = seq;
    s->ev_appends++;
    if (seq_out) *seq_out = seq;
    return 0;
}

uint64_t cy_store_event_number(cy_store *s, int64_t at)
{
    uint64_t now_us = at > 0 && at <= INT64_MAX / 1000 ? (uint64_t)at * 1000 : 0;
    uint64_t seq = s->ev_last + 1 > now_us ? s->ev_last + 1 : now_us;
    if (seq >= (UINT64_C(1) << 63)) return 0;
    s->ev_last = seq;
    return seq;
}

static int ev_rows(cy_store *s, sqlite3_stmt *st, int (*fn)(void *, const cy_store_event *),
                   void *ctx, const char *what)
{
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        cy_store_event e = {.seq = col_u64(st, 0), .at = sqlite3_column_int64(st, 1)};
        e.topic = col_str(st, 2, &e.topic_len);
        e.payload = col_bytes(st, 3, &e.payload_len);
        rc = fn(ctx, &e);
    }
    return rows_end(s, st, rc, sr, what);
}

int cy_store_events_read(cy_store *s, uint64_t after, unsigned limit,
                         int (*fn)(void *ctx, const cy_store_event *e), void *ctx)
{
    if (!s || !fn) return CY_EINVAL;
    sqlite3_stmt *st = s->st[ST_EV_READ];
    if (bind_u64(st, 1, after) || sqlite3_bind_int64(st, 2, limit ? limit : 1)) {
        done(st);
        return db_fail(s->db, "events read");
    }
    return ev_rows(s, st, fn, ctx, "events read");
}

int cy_store_events_tail(cy_store *s, unsigned limit, int (*fn)(void *ctx, const cy_store_event *e),
                         void *ctx)
{
    if (!s || !fn) return CY_EINVAL;
    sqlite3_stmt *st = s->st[ST_EV_TAIL];
    if (sqlite3_bind_int64(st, 1, limit)) {
        done(st);
        return db_fail(s->db, "events tail");
    }
    return ev_rows(s, st, fn, ctx, "events tail");
}

int cy_store_event_get(cy_store *s, uint64_t seq, int (*fn)(void *ctx, const cy_store_event *e),
                       void *ctx)
{
    if (!s || !fn) return CY_EINVAL;
    sqlite3_stmt *st = s->st[ST_EV_GET];
    if (bind_u64(st, 1, seq)) {
        done(st);
        return db_fail(s->db, "event get");
    }
    bool found = false;
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        cy_store_event e = {.seq = col_u64(st, 0), .at = sqlite3_column_int64(st, 1)};
        e.topic = col_str(st, 2, &e.topic_len);
        e.payload = col_bytes(st, 3, &e.payload_len);
        found = true;
        rc = fn(ctx, &e);
    }
    rc = rows_end(s, st, rc, sr, "event get");
    return rc ? rc : found ? 0 : CY_ENOENT;
}

int cy_store_events_span(cy_store *s, uint64_t after, uint64_t *first, uint64_t *count,
                         uint64_t *count_after)
{
    if (!s) return CY_EINVAL;
    sqlite3_stmt *st = s->st[ST_EV_FIRST];
    int sr = sqlite3_step(st);
    if (sr == SQLITE_ROW) {
        if (first) *first = col_u64(st, 0);
        if (count) *count = col_u64(st, 1);
    }
    done(st);
    if (sr != SQLITE_ROW) return db_fail(s->db, "events span");
    if (!count_after) return 0;
    st = s->st[ST_EV_COUNT_AFTER];
    if (bind_u64(st, 1, after)) {
        done(st);
        return db_fail(s->db, "events count");
    }
    sr = sqlite3_step(st);
    if (sr == SQLITE_ROW) *count_after = col_u64(st, 0);
    done(st);
    return sr == SQLITE_ROW ? 0 : db_fail(s->db, "events count");
}

int cy_store_events_trim(cy_store *s, uint64_t below, int64_t at_before, uint64_t keep,
                         unsigned max_rows)
{
    if (!s || s->readonly) return CY_EINVAL;
    /* cut: the newest seq beyond the `keep` newest events (0: none). Found
     * by walking `keep` rows of the index, so it is cached and found again
     * only once keep/8 more events came: a cut older than the true one
     * only keeps a few more rows than asked. */
    if (!s->ev_cut_mark || keep != s->ev_cut_keep ||
        s->ev_appends - (s->ev_cut_mark - 1) > keep / 8) {
        uint64_t cut = 0;
        sqlite3_stmt *nth = s->st[ST_EV_NTH];
        if (sqlite3_bind_int64(nth, 1, (sqlite3_int64)(keep > INT64_MAX ? INT64_MAX : keep))) {
            done(nth);
            return db_fail(s->db, "events trim");
        }
        int sr = sqlite3_step(nth);
        if (sr == SQLITE_ROW) cut = col_u64(nth, 0);
        done(nth);
        if (sr != SQLITE_ROW && sr != SQLITE_DONE) return db_fail(s->db, "events trim");
        s->ev_cut = cut;
        s->ev_cut_keep = keep;
        s->ev_cut_mark = s->ev_appends + 1;
    }
    uint64_t cut = s->ev_cut;
    if (write_begin(s)) return CY_ESTORE;
    sqlite3_stmt *st = s->st[ST_EV_TRIM];
    if (bind_u64(st, 1, below) || sqlite3_bind_int64(st, 2, at_before) ||
        sqlite3_bind_int64(st, 3, max_rows) || bind_u64(st, 4, cut)) {
        done(st);
        return write_end(s, db_fail(s->db, "events trim"), 0);
    }
    int rc = write_end(s, step_done(s, ST_EV_TRIM, "events trim"), 0);
    return rc ? rc : sqlite3_changes(s->db);
}

/* ---- webhook delivery state ---- */

int cy_store_hook_state_put(cy_store *s, const cy_store_hook_state *h)
{
    if (!s || !h || !h->hook || !h->shown || s->readonly) return CY_EINVAL;
    if (write_begin(s)) return CY_ESTORE;
    sqlite3_stmt *st = s->st[ST_HS_PUT];
    size_t sl = strlen(h->shown);
    if (bind_str(st, 1, h->hook, strlen(h->hook)) || bind_u64(st, 2, h->cursor) ||
        bind_u64(st, 3, h->matched) || bind_u64(st, 4, h->delivered) || bind_u64(st, 5, h->dead) ||
        bind_str(st, 6, h->shown, sl)) {
        done(st);
        return write_end(s, db_fail(s->db, "hook state put"), 0);
    }
    return write_end(s, step_done(s, ST_HS_PUT, "hook state put"), sl);
}

int cy_store_hook_states(cy_store *s, int (*fn)(void *ctx, const cy_store_hook_state *h), void *ctx)
{
    if (!s || !fn) return CY_EINVAL;
    sqlite3_stmt *st = s->st[ST_HS_LOAD];
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        size_t len;
        cy_store_hook_state h = {.cursor = col_u64(st, 1),
                                 .matched = col_u64(st, 2),
                                 .delivered = col_u64(st, 3),
                                 .dead = col_u64(st, 4)};
        h.hook = col_str(st, 0, &len);
        h.shown = col_str(st, 5, &len);
        rc = fn(ctx, &h);
    }
    return rows_end(s, st, rc, sr, "hook states");
}

/* Put a retry or dead row (same columns). */
static int hook_row_put(cy_store *s, int which, const char *what, const cy_store_hook_row *r)
{
    if (!s || !r || !r->hook || !r->topic || (!r->payload && r->payload_len) || !r->trail ||
        s->readonly)
        return CY_EINVAL;
    if (write_begin(s)) return CY_ESTORE;
    sqlite3_stmt *st = s->st[which];
    size_t tl = strlen(r->trail);
    if (bind_str(st, 1, r->hook, strlen(r->hook)) || bind_u64(st, 2, r->seq) ||
        sqlite3_bind_int64(st, 3, r->at) || bind_str(st, 4, r->topic, r->topic_len) ||
        bind_bytes(st, 5, r->payload, r->payload_len) ||
        sqlite3_bind_int(st, 6, (int)r->attempts) || sqlite3_bind_int64(st, 7, r->next_at) ||
        bind_str(st, 8, r->trail, tl)) {
        done(st);
        return write_end(s, db_fail(s->db, what), 0);
    }
    return write_end(s, step_done(s, which, what), r->topic_len + r->payload_len + tl);
}

static int hook_row_del(cy_store *s, int which, const char *what, const char *hook, uint64_t seq,
                        bool by_seq)
{
    if (!s || !hook || s->readonly) return CY_EINVAL;
    if (write_begin(s)) return CY_ESTORE;
    sqlite3_stmt *st = s->st[which];
    if (bind_str(st, 1, hook, strlen(hook)) || (by_seq && bind_u64(st, 2, seq))) {
        done(st);
        return write_end(s, db_fail(s->db, what), 0);
    }
    return write_end(s, step_done(s, which, what), 0);
}

static int hook_rows(cy_store *s, sqlite3_stmt *st, int (*fn)(void *, const cy_store_hook_row *),
                     void *ctx, const char *what, bool *found)
{
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        size_t len;
        cy_store_hook_row r = {.seq = col_u64(st, 1),
                               .at = sqlite3_column_int64(st, 2),
                               .attempts = (unsigned)sqlite3_column_int(st, 5),
                               .next_at = sqlite3_column_int64(st, 6)};
        r.hook = col_str(st, 0, &len);
        r.topic = col_str(st, 3, &r.topic_len);
        r.payload = col_bytes(st, 4, &r.payload_len);
        r.trail = col_str(st, 7, &len);
        if (found) *found = true;
        rc = fn(ctx, &r);
    }
    return rows_end(s, st, rc, sr, what);
}

int cy_store_hook_retry_put(cy_store *s, const cy_store_hook_row *r)
{
    return hook_row_put(s, ST_HR_PUT, "hook retry put", r);
}

int cy_store_hook_retry_delete(cy_store *s, const char *hook, uint64_t seq)
{
    return hook_row_del(s, ST_HR_DEL, "hook retry delete", hook, seq, true);
}

int cy_store_hook_retries(cy_store *s, int (*fn)(void *ctx, const cy_store_hook_row *r), void *ctx)
{
    if (!s || !fn) return CY_EINVAL;
    return hook_rows(s, s->st[ST_HR_LOAD], fn, ctx, "hook retries", NULL);
}

int cy_store_hook_dead_put(cy_store *s, const cy_store_hook_row *r)
{
    return hook_row_put(s, ST_HD_PUT, "hook dead put", r);
}

int cy_store_hook_dead_delete(cy_store *s, const char *hook, uint64_t seq)
{
    return hook_row_del(s, ST_HD_DEL, "hook dead delete", hook, seq, true);
}

int cy_store_hook_dead_list(cy_store *s, const char *hook, uint64_t after, unsigned limit,
                            int (*fn)(void *ctx, const cy_store_hook_row *r), void *ctx)
{
    if (!s || !hook || !fn) return CY_EINVAL;
    sqlite3_stmt *st = s->st[ST_HD_LIST];
    if (bind_str(st, 1, hook, strlen(hook)) || bind_u64(st, 2, after) ||
        sqlite3_bind_int64(st, 3, limit ? limit : 1)) {
        done(st);
        return db_fail(s->db, "hook dead list");
    }
    return hook_rows(s, st, fn, ctx, "hook dead list", NULL);
}

int cy_store_hook_dead_get(cy_store *s, const char *hook, uint64_t seq,
                           int (*fn)(void *ctx, const cy_store_hook_row *r), void *ctx)
{
    if (!s || !hook || !fn) return CY_EINVAL;
    sqlite3_stmt *st = s->st[ST_HD_GET];
    if (bind_str(st, 1, hook, strlen(hook)) || bind_u64(st, 2, seq)) {
        done(st);
        return db_fail(s->db, "hook dead get");
    }
    bool found = false;
    int rc = hook_rows(s, st, fn, ctx, "hook dead get", &found);
    return rc ? rc : found ? 0 : CY_ENOENT;
}

int cy_store_hook_retry_get(cy_store *s, const char *hook, uint64_t seq,
                            int (*fn)(void *ctx, const cy_store_hook_row *r), void *ctx)
{
    if (!s || !hook || !fn) return CY_EINVAL;
    sqlite3_stmt *st = s->st[ST_HR_GET];
    if (bind_str(st, 1, hook, strlen(hook)) || bind_u64(st, 2, seq)) {
        done(st);
        return db_fail(s->db, "hook retry get");
    }
    bool found = false;
    int rc = hook_rows(s, st, fn, ctx, "hook retry get", &found);
    return rc ? rc : found ? 0 : CY_ENOENT;
}

int cy_store_hook_dead_after(cy_store *s, uint64_t after,
                             int (*fn)(void *ctx, const char *hook, uint64_t seq), void *ctx)
{
    if (!s || !fn) return CY_EINVAL;
    sqlite3_stmt *st = s->st[ST_HD_SEQS];
    if (bind_u64(st, 1, after)) {
        done(st);
        return db_fail(s->db, "hook dead seqs");
    }
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        size_t len;
        rc = fn(ctx, col_str(st, 0, &len), col_u64(st, 1));
    }
    return rows_end(s, st, rc, sr, "hook dead seqs");
}

int cy_store_hook_forget(cy_store *s, const char *hook)
{
    int rc = hook_row_del(s, ST_HS_DEL, "hook forget", hook, 0, false);
    if (!rc) rc = hook_row_del(s, ST_HR_DEL_HOOK, "hook forget", hook, 0, false);
    if (!rc) rc = hook_row_del(s, ST_HD_DEL_HOOK, "hook forget", hook, 0, false);
    return rc;
}

int cy_store_open_reader(const char *path, cy_store **out)
{
    if (!path || !out) return CY_EINVAL;
    *out = NULL;
    cy_store *s = cy_calloc(1, sizeof(*s));
    if (!s) return CY_ENOMEM;
    s->readonly = true;
    int rc;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        rc = access(path, F_OK) == 0 ? CY_ESTORE : CY_ENOENT;
        goto fail;
    }
    sqlite3_busy_timeout(s->db, 200);
    for (int i = 0; i < N_ST; i++) {
        if (sqlite3_prepare_v3(s->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) !=
            SQLITE_OK) {
            /* An older file (its shard not restarted since the upgrade), or
             * an empty one, has no log: nothing to read in it, which is not
             * an error (a missing table is SQLITE_ERROR). A file that is not
             * a database, is corrupt or could not be read is. */
            rc = sqlite3_errcode(s->db) == SQLITE_ERROR ? CY_ENOENT : db_fail(s->db, "open reader");
            goto fail;
        }
    }
    *out = s;
    return 0;
fail:
    cy_store_close(s);
    return rc;
}
