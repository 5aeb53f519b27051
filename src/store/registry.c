/* cy_registry: the device registry, one SQLite file (WAL) per node.
 *
 * A device is an id (12 random bytes, 24 lowercase hex characters), a name
 * chosen by its owner, and a secret (16 random bytes, 32 lowercase hex
 * characters) that cyan makes, shows once and never stores. What is stored
 * is a per-device random 16-byte salt and HMAC-SHA256(key = salt, data =
 * the secret's 32 ASCII hex characters). Because the secret has 128 bits of
 * entropy, one keyed hash is as good as a slow password hash and costs
 * microseconds on every CONNECT. Checking recomputes the HMAC and compares
 * in constant time (CRYPTO_memcmp); an unknown id still computes and
 * compares one HMAC, so the answer's timing does not say whether the id
 * exists.
 *
 * Names are 1..CY_DEVICE_NAME_MAX characters from [A-Za-z0-9._-], unique.
 * Because get and remove accept an id or a name, a name that is itself
 * shaped like an id (24 lowercase hex characters) is refused.
 *
 * Many processes open this file (every shard reads it, the admin command
 * and the API write it), so writes are single autocommitted statements and
 * the busy timeout absorbs the short write locks. A loop must not wait out
 * another process's lock (a `sqlite3` shell in a write transaction), or its
 * watchdog kills it as hung: a handle with shared reads on (a loop) waits
 * at most CY_REGISTRY_LOOP_BUSY_MS, or what cy_registry_set_busy_timeout
 * says, and a statement that met a lock closes its kind (reads, writes)
 * for BACKOFF_MS: they fail with CY_ESTORE at once, so a pass of many
 * requests waits once. In WAL mode reads never wait for a writer anyway.
 *
 * Checks read from a cache: the rows (salt, hash, scopes, expiry) of devices and
 * tokens found once, so the hot path (every CONNECT, every API request)
 * does not touch SQLite. Whether the cache is still the file's is asked at
 * most every RECHECK_MS with PRAGMA data_version, which moves when another
 * connection commits; if it moved, the whole cache goes (rows are few and
 * reloaded one by one as they are checked). This handle's own removals
 * clear it at once (its own commits do not move data_version). So another
 * process's revocation or removal is refused within RECHECK_MS, or at once
 * after cy_registry_fresh, which makes the next lookup read data_version
 * inside a new shared snapshot (a shard's API calls it before each batch of
 * requests: one read transaction per batch, and every request sees what was
 * committed before it arrived). Device gets (cy_registry_device_get,
 * cy_registry_internal_get) are cached the same way, under the id or name
 * they were asked by, and dropped with the rest. Nothing
 * negative is kept: an unknown id is looked up every time, so a device
 * added is found at once, and strangers' made-up ids cannot fill memory.
 *
 * A miss costs a read transaction, and in WAL mode starting and ending one
 * is most of the work: two POSIX lock calls and an fstat. An owner that
 * checks in bursts (a shard, one loop pass of CONNECTs) turns on
 * cy_registry_share_reads: misses then share one read transaction, begun
 * by the first and ended by cy_registry_end_reads, which the owner calls
 * before its loop waits. The other calls end a shared transaction first,
 * so their writes commit at once.
 *
 * The HMAC runs on a context made once at open (OpenSSL's one-shot HMAC()
 * fetches the algorithm again on every call: 3x slower); making it loads
 * OpenSSL's provider at start rather than at the first CONNECT. The registry always runs
 * with synchronous=FULL: additions are rare, and a device whose secret was
 * shown must not be forgotten by a power cut.
 *
 * API tokens (schema version 2) are stored the same way: a token is the
 * text "cyt_<id>_<secret>", id 6 random bytes (12 lowercase hex characters)
 * and secret 16 random bytes (32), and the row keeps the id, a name, the
 * scope, a per-token salt and HMAC-SHA256(key = salt, data = the secret's 32
 * ASCII hex characters). The fixed prefix lets people and secret scanners
 * recognise a leaked token, and the id inside it finds the row without a
 * search. Token names follow the device name rules but need not be unique,
 * and may look like a device id: tokens are only ever revoked by id.
 *
 * Internal devices and tokens (schema version 3) are cyan's own: the
 * canaries, synthetic devices the monitor keeps on every shard, and the
 * token with which they call each other through the API. A device row has
 * an `internal` flag; an internal token has the scope CY_SCOPE_INTERNAL.
 * The user-facing calls (get, remove, list of devices) see user devices
 * only, so no caller can show, count or delete an internal device by
 * mistake; checks see both (a canary connects like any device). Internal
 * names hold a ':', which user names cannot, so the two never take each
 * other's name. Their secrets are not kept anywhere: whoever ensures an
 * internal device or token gets a new secret each time (the old one stops
 * working), so the only copy lives in the memory of the process that uses
 * it (see store.h, "Internal devices and tokens").
 *
 * Webhook definitions (schema version 4) live here too, beside devices and
 * tokens, because they belong to the node: tables webhooks and
 * webhook_replays, and a generation counter in the meta table (named
 * counters, one row each), bumped in the same transaction as every change
 * so that a shard rereads the definitions only when they changed. hooks.c
 * reads and writes them through the handle (registry_int.h); the schema is
 * here.
 *
 * DTLS pre-shared keys (schema version 5): CoAP over DTLS authenticates a
 * device with a PSK, and a PSK server must hold the key itself, not a hash
 * of it. So each device also gets a PSK, 16 random bytes shown as 32
 * lowercase hex characters (that ASCII text is the key's bytes), kept in a
 * nullable column devices.psk as AES-256-GCM(key = the node's key file,
 * nonce = 12 random bytes, additional data = the device id) of the text,
 * stored nonce | ciphertext | tag (60 bytes). The id as additional data
 * binds a sealed PSK to its row: copied to another device it fails to
 * open. The key file is "registry.key" beside the registry file, 32 random
 * bytes: read at open when it exists, made on first need (the first PSK
 * issued) as a whole file of mode 0600 (written to a fresh temporary file
 * and linked into place, which fails if another process made it first:
 * then theirs is read, so all processes use one key and none reads a half
 * written file). A handle without the key (no file yet, or unreadable)
 * works for everything else; a lookup of a PSK retries reading it at most
 * every RECHECK_MS, so a key file another process made is found. So a
 * stolen registry.db alone exposes no PSK; the data folder does. Devices
 * made before version 5 have NULL: no PSK until one is issued
 * (cy_registry_device_psk_new). PSK lookups are not cached: each reads
 * its row (in the shared read transaction of a loop pass), so a new PSK
 * is used from the next pass.
 *
 * Token scopes, expiry and last use (schema version 6): tokens.scope holds
 * a bit mask of CY_SCOPE_* (store.h) instead of one of the three values of
 * before (1 read-only, 2 full, 3 internal), which the migration turns into
 * devices:read + events:read, every user scope, and CY_SCOPE_INTERNAL; any
 * other value becomes 0, which no check accepts (a corrupt row stays
 * refused, rather than turning into some scope). tokens.expires_at (wall
 * ms, 0 = never) is cached with the row and judged at each check;
 * tokens.last_used_at (wall ms, 0 = never) is written from the uses a
 * handle notes in memory (map `used`), at most once a minute per token:
 * a check on the hot path never writes.
 *
 * Derived keys: a purpose that needs a secret every process of the node
 * shares (stream tokens: api/api_stream_token.h) gets HMAC-SHA256(key file,
 * label), never the key file's own bytes (cy_registry_subkey).
 *
 * Schema versions (PRAGMA user_version): 1 had devices only; 2 adds tokens;
 * 3 adds devices.internal; 4 adds webhooks, webhook_replays and meta; 5 adds
 * devices.psk; 6 makes tokens.scope a mask and adds tokens.expires_at and
 * tokens.last_used_at. A new file gets version 6 directly, an older file is
 * migrated at open one version at a time (see db.h), a newer file is
 * refused.
 *
 * Every SQLite failure is logged once, where it is detected, and returned
 * as CY_ESTORE.
 */
#include "store/store.h"
#include "store/registry_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "core/cy_map.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include "store/db.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCHEMA_VERSION 6
#define ID_BYTES (CY_DEVICE_ID_LEN / 2)         /* 12 */
#define SECRET_BYTES (CY_DEVICE_SECRET_LEN / 2) /* 16 */
#define SALT_BYTES 16
#define HASH_BYTES 32                     /* SHA-256 */
#define PSK_BYTES (CY_DEVICE_PSK_LEN / 2) /* 16 random bytes, shown as hex */

/* A sealed PSK: AES-256-GCM nonce | ciphertext of the PSK's hex text | tag. */
#define KEY_BYTES 32 /* AES-256 */
#define NONCE_BYTES 12
#define TAG_BYTES 16
#define SEALED_BYTES (NONCE_BYTES + CY_DEVICE_PSK_LEN + TAG_BYTES) /* 60 */
#define KEY_FILE "registry.key"
/* PSK failures (no key, a record that does not open) are logged at most
 * once per this many ms per handle: a handshake may ask every moment. */
#define PSK_LOG_MS 60000

#define TOKEN_PREFIX "cyt_"
#define TOKEN_PREFIX_LEN 4
#define TOKEN_ID_BYTES (CY_TOKEN_ID_LEN / 2) /* 6 */
#define TOKEN_SECRET_LEN 32                  /* hex characters (128 bits) */
#define TOKEN_SECRET_BYTES (TOKEN_SECRET_LEN / 2)
/* "cyt_" id "_" secret: every valid token has exactly this length. */
#define TOKEN_LEN (TOKEN_PREFIX_LEN + CY_TOKEN_ID_LEN + 1 + TOKEN_SECRET_LEN) /* 49 */
_Static_assert(TOKEN_LEN <= CY_TOKEN_MAX, "a token must fit in CY_TOKEN_MAX");
_Static_assert(CY_TOKEN_NAME_MAX == CY_DEVICE_NAME_MAX, "tokens share the device name rules");

/* Version 5's devices; a migrated file gets the same table text (ALTER
 * TABLE appends ", <column>" before the closing parenthesis). psk is NULL
 * for a device that has none (made before version 5). */
#define TABLE_DEVICES                                                                              \
    "CREATE TABLE IF NOT EXISTS devices("                                                          \
    " id TEXT PRIMARY KEY NOT NULL,"                                                               \
    " name TEXT NOT NULL UNIQUE,"                                                                  \
    " salt BLOB NOT NULL,"                                                                         \
    " hash BLOB NOT NULL,"                                                                         \
    " created_at INTEGER NOT NULL, internal INTEGER NOT NULL DEFAULT 0, psk BLOB);"

/* Added by version 2 (the migration to 2 makes it so); version 6 appends two
 * columns (TABLE_TOKENS_V6). Names are not unique: two people may both call
 * their token "ci". */
#define TABLE_TOKENS                                                                               \
    "CREATE TABLE IF NOT EXISTS tokens("                                                           \
    " id TEXT PRIMARY KEY NOT NULL,"                                                               \
    " name TEXT NOT NULL,"                                                                         \
    " scope INTEGER NOT NULL,"                                                                     \
    " salt BLOB NOT NULL,"                                                                         \
    " hash BLOB NOT NULL,"                                                                         \
    " created_at INTEGER NOT NULL);"

/* Added by version 4 (hooks.c; store/hooks.h), shared by a new file and the
 * migration. A webhook's fields are what hooks.c checked; its secret is
 * kept as is (it signs requests, see hooks.h). Replay requests name their
 * shard first, so the shard's poll reads the unique index. meta holds
 * named counters; 'webhooks_gen' moves with every change of the webhooks
 * and their replay requests. */
#define TABLE_WEBHOOKS                                                                             \
    "CREATE TABLE IF NOT EXISTS webhooks("                                                         \
    " id TEXT PRIMARY KEY NOT NULL,"                                                               \
    " event TEXT NOT NULL,"                                                                        \
    " url TEXT NOT NULL,"                                                                          \
    " method TEXT NOT NULL,"                                                                       \
    " headers TEXT,"                                                                               \
    " body_kind INTEGER NOT NULL,"                                                                 \
    " body TEXT,"                                                                                  \
    " device_id TEXT NOT NULL,"                                                                    \
    " response_topic TEXT,"                                                                        \
    " error_topic TEXT,"                                                                           \
    " enabled INTEGER NOT NULL,"                                                                   \
    " ordered INTEGER NOT NULL,"                                                                   \
    " disabled_reason TEXT NOT NULL,"                                                              \
    " secret TEXT NOT NULL,"                                                                       \
    " old_secret TEXT NOT NULL,"                                                                   \
    " old_secret_until INTEGER NOT NULL,"                                                          \
    " created_at INTEGER NOT NULL,"                                                                \
    " updated_at INTEGER NOT NULL);"                                                               \
    "CREATE TABLE IF NOT EXISTS webhook_replays("                                                  \
    " shard INTEGER NOT NULL,"                                                                     \
    " webhook TEXT NOT NULL,"                                                                      \
    " seq INTEGER NOT NULL,"                                                                       \
    " UNIQUE(shard, webhook, seq));"                                                               \
    "CREATE TABLE IF NOT EXISTS meta("                                                             \
    " name TEXT PRIMARY KEY NOT NULL,"                                                             \
    " value INTEGER NOT NULL);"                                                                    \
    "INSERT OR IGNORE INTO meta(name, value) VALUES('webhooks_gen', 0);"

/* Version 6's tokens; a migrated file gets the same table text (ALTER
 * TABLE appends ", <column>" before the closing parenthesis). scope is a
 * mask of CY_SCOPE_* bits. */
#define TABLE_TOKENS_V6                                                                            \
    "CREATE TABLE IF NOT EXISTS tokens("                                                           \
    " id TEXT PRIMARY KEY NOT NULL,"                                                               \
    " name TEXT NOT NULL,"                                                                         \
    " scope INTEGER NOT NULL,"                                                                     \
    " salt BLOB NOT NULL,"                                                                         \
    " hash BLOB NOT NULL,"                                                                         \
    " created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL DEFAULT 0,"                         \
    " last_used_at INTEGER NOT NULL DEFAULT 0);"

static const char schema_v6[] =
    TABLE_DEVICES TABLE_TOKENS_V6 TABLE_WEBHOOKS "PRAGMA user_version = 6;";

/* Version 1 to 2: devices are untouched, the tokens table starts empty (and
 * so the next `cyan serve` bootstraps the first one). */
static const char migrate_v2[] = TABLE_TOKENS "PRAGMA user_version = 2;";

/* Version 2 to 3: every existing device is a user's. Tokens keep their
 * table; CY_SCOPE_INTERNAL is a new value of their scope. */
static const char migrate_v3[] =
    "ALTER TABLE devices ADD COLUMN internal INTEGER NOT NULL DEFAULT 0;"
    "PRAGMA user_version = 3;";

/* Version 3 to 4: devices and tokens untouched; no webhooks yet. */
static const char migrate_v4[] = TABLE_WEBHOOKS "PRAGMA user_version = 4;";

/* Version 4 to 5: every existing device has no PSK until one is issued. */
static const char migrate_v5[] = "ALTER TABLE devices ADD COLUMN psk BLOB;"
                                 "PRAGMA user_version = 5;";

/* Version 5 to 6: scopes become masks (1 read-only -> devices:read +
 * events:read, 2 full -> every user scope, 3 internal -> CY_SCOPE_INTERNAL;
 * anything else -> 0, refused); no token expires; none was used yet as far
 * as the file knows. */
static const char migrate_v6[] =
    "ALTER TABLE tokens ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tokens ADD COLUMN last_used_at INTEGER NOT NULL DEFAULT 0;"
    "UPDATE tokens SET scope = CASE scope WHEN 1 THEN 5 WHEN 2 THEN 63 WHEN 3 THEN 64 ELSE 0 END;"
    "PRAGMA user_version = 6;";
_Static_assert(CY_SCOPE_READ_ONLY == 5 && CY_SCOPE_ALL == 63 && CY_SCOPE_INTERNAL == 64,
               "migrate_v6 spells the scopes as numbers");

/* migrations[v] takes a file from version v to v + 1. */
static const char *const migrations[] = {NULL,       migrate_v2, migrate_v3,
                                         migrate_v4, migrate_v5, migrate_v6};

enum {
    ST_ADD,
    ST_CHECK,
    ST_GET,
    ST_REMOVE,
    ST_RENAME,
    ST_LIST,
    ST_TOKEN_ADD,
    ST_TOKEN_CHECK,
    ST_TOKEN_LIST,
    ST_TOKEN_REVOKE,
    ST_TOKEN_ANY,
    ST_INTERNAL_GET,
    ST_INTERNAL_BY_NAME,
    ST_INTERNAL_ADD,
    ST_INTERNAL_REKEY,
    ST_INTERNAL_DELETE,
    ST_TOKEN_DROP_INTERNAL,
    ST_TOKEN_USED,
    ST_PSK_GET,
    ST_PSK_SET,
    ST_PSK_ANY,
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_READ_BEGIN,
    ST_READ_END,
    ST_VERSION,
    N_ST
};

_Static_assert(CY_SCOPE_INTERNAL == 64, "the SQL below spells CY_SCOPE_INTERNAL as 64");

/* A user device found by id or name: an exact id match wins over a name
 * match. Internal devices are never found this way. */
#define USER_BY_ID_OR_NAME                                                                         \
    "WHERE internal = 0 AND (id = ?1 OR name = ?1) ORDER BY id = ?1 DESC LIMIT 1"

static const char *const sql[N_ST] = {
    [ST_ADD] = "INSERT INTO devices(id, name, salt, hash, created_at, psk)"
               " VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    /* Column 2 (internal) is cached with the row: the events of internal
     * devices are told apart from the cache (cy_registry_device_internal). */
    [ST_CHECK] = "SELECT salt, hash, internal FROM devices WHERE id = ?1",
    [ST_GET] = "SELECT id, name, created_at, internal FROM devices " USER_BY_ID_OR_NAME,
    [ST_REMOVE] =
        "DELETE FROM devices WHERE rowid = (SELECT rowid FROM devices " USER_BY_ID_OR_NAME ")",
    [ST_RENAME] = "UPDATE devices SET name = ?2 WHERE internal = 0 AND id = ?1",
    /* rowids grow with insertion, so rowid order is creation order. */
    [ST_LIST] = "SELECT id, name, created_at, internal FROM devices WHERE internal = 0"
                " ORDER BY rowid",
    [ST_TOKEN_ADD] = "INSERT INTO tokens(id, name, scope, salt, hash, created_at, expires_at)"
                     " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    /* Column 3 (expires_at) is cached with the row, beside the scope. */
    [ST_TOKEN_CHECK] = "SELECT salt, hash, scope, expires_at FROM tokens WHERE id = ?1",
    [ST_TOKEN_LIST] = "SELECT id, name, scope, created_at, expires_at, last_used_at FROM tokens"
                      " ORDER BY rowid",
    [ST_TOKEN_REVOKE] = "DELETE FROM tokens WHERE id = ?1",
    /* Only a user's token counts: the monitor's own does not administer the node. */
    [ST_TOKEN_ANY] = "SELECT EXISTS(SELECT 1 FROM tokens WHERE scope != 64)",
    [ST_INTERNAL_GET] =
        "SELECT id, name, created_at, internal FROM devices WHERE internal = 1 AND id = ?1",
    [ST_INTERNAL_BY_NAME] = "SELECT id FROM devices WHERE internal = 1 AND name = ?1",
    [ST_INTERNAL_ADD] = "INSERT INTO devices(id, name, salt, hash, created_at, internal)"
                        " VALUES(?1, ?2, ?3, ?4, ?5, 1)",
    [ST_INTERNAL_REKEY] = "UPDATE devices SET salt = ?2, hash = ?3 WHERE internal = 1 AND id = ?1",
    [ST_INTERNAL_DELETE] = "DELETE FROM devices WHERE internal = 1 AND id = ?1",
    [ST_TOKEN_DROP_INTERNAL] = "DELETE FROM tokens WHERE scope = 64 AND name = ?1",
    /* Never back in time: shards write the uses each of them saw. */
    [ST_TOKEN_USED] = "UPDATE tokens SET last_used_at = ?2 WHERE id = ?1 AND last_used_at < ?2",
    /* A user's device or an internal one: both connect. */
    [ST_PSK_GET] = "SELECT psk FROM devices WHERE id = ?1",
    [ST_PSK_SET] = "UPDATE devices SET psk = ?2 WHERE id = ?1 AND internal = ?3",
    [ST_PSK_ANY] = "SELECT EXISTS(SELECT 1 FROM devices WHERE psk IS NOT NULL)",
    /* IMMEDIATE: the bootstrap's check-then-insert must not race another process's. */
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_READ_BEGIN] = "BEGIN", /* deferred: the read lock comes with the first SELECT */
    [ST_READ_END] = "COMMIT",
    [ST_VERSION] = "PRAGMA data_version",
};

/* The cache: how often its validity is asked of SQLite, how many rows it
 * holds at most (a full cache starts over), and how long a statement that
 * found the file locked keeps its kind of statement from trying again. */
#define RECHECK_MS CY_REGISTRY_RECHECK_MS
#define CACHE_MAX 262144
/* Device gets cached at most (about 200 bytes each): the devices the API
 * is asked about, a working set; a full one starts over like the rows. */
#define DEVS_MAX 8192
#define BACKOFF_MS 200

/* A cached row: a device ('d' + id) or a token ('t' + id). The key lives
 * here, the map borrows it. */
typedef struct cached {
    char key[1 + CY_DEVICE_ID_LEN];
    uint8_t klen;
    unsigned scope;     /* tokens: CY_SCOPE_* bits; devices: 1 for an internal device, else 0 */
    int64_t expires_at; /* tokens: wall ms, 0 = never; devices: 0 */
    uint8_t salt[SALT_BYTES];
    uint8_t hash[HASH_BYTES];
} cached;

/* A device found by a get in the shared snapshot (cy_registry_device_get,
 * cy_registry_internal_get), under the key it was asked by: 'g' or 'i'
 * and the id or name given. Kept with the rows above, and dropped with
 * them. */
typedef struct devrow {
    char key[2 + CY_DEVICE_NAME_MAX];
    uint8_t klen;
    cy_device d;
} devrow;

enum { READS, WRITES };

struct cy_registry {
    sqlite3 *db;
    sqlite3_stmt *st[N_ST];
    EVP_MAC_CTX *mac;               /* HMAC-SHA256, rekeyed with each device's salt */
    bool share_reads;               /* checks share a read transaction until end_reads */
    bool reading;                   /* that transaction is open */
    bool busy_set;                  /* cy_registry_set_busy_timeout was called */
    cy_map cache;                   /* key -> cached, rows seen by checks */
    cy_map devs;                    /* lookup key -> devrow, devices seen by shared gets */
    int64_t version;                /* PRAGMA data_version the cache is valid for; -1 none */
    bool recheck_now;               /* cy_registry_fresh: check at the next lookup */
    bool snap_checked;              /* version read inside the open shared transaction */
    int64_t checked_ms;             /* mono ms of the last data_version read */
    int64_t busy_until_ms[2];       /* READS, WRITES: mono ms before which they fail at once */
    sqlite3_stmt *hook_st[CY_RH_N]; /* hooks.c's statements (registry_int.h) */
    /* DTLS PSKs: the cipher, fetched once, and one context reused. */
    EVP_CIPHER *gcm;
    EVP_CIPHER_CTX *cctx;
    char *key_path;         /* DIR/registry.key; NULL for an in-memory registry */
    bool have_key;          /* key holds the key file's bytes */
    uint8_t key[KEY_BYTES]; /* AES-256 key sealing the PSKs */
    bool key_tried;         /* a lookup read the key file and failed... */
    int64_t key_tried_ms;   /* ...at this mono ms: again after RECHECK_MS */
    bool psk_logged;        /* a PSK failure was logged... */
    int64_t psk_log_ms;     /* ...at this mono ms */
    uint64_t psk_held;      /* failures not logged since that line */
    /* Last uses of tokens noted by checks and not yet written (see "Token
     * scopes, expiry and last use"): token id -> token_use. */
    cy_map used;
    int64_t used_scan_ms;   /* wall ms of the last flush's look at `used` */
    int64_t used_window_ms; /* wall ms the current minute of writes began (0: none yet) */
    int64_t used_retry_ms;  /* wall ms before which a failed flush is not tried again */
};

/* A token's use as this handle knows it. */
typedef struct token_use {
    char id[CY_TOKEN_ID_LEN + 1]; /* the map's key */
    int64_t used;                 /* wall ms of the latest use */
    int64_t stored;               /* the use last written (0: none by us) */
    int64_t written;              /* wall ms when it was written (0: never) */
} token_use;

/* Log a failed statement; CY_ESTORE. A lock held by another process
 * (SQLITE_BUSY after the busy timeout) closes that kind of statement for
 * BACKOFF_MS, so a loop serving many requests waits once, not once each. */
static int fail(cy_registry *r, int kind, const char *what)
{
    if ((sqlite3_errcode(r->db) & 0xff) == SQLITE_BUSY)
        r->busy_until_ms[kind] = cy_mono_ms() + BACKOFF_MS;
    return cy_db_fail(r->db, "registry", what);
}

/* CY_ESTORE without touching SQLite while a lock was met recently. */
static int closed(cy_registry *r, int kind)
{
    return cy_mono_ms() < r->busy_until_ms[kind] ? CY_ESTORE : 0;
}

static void free_value(void *ctx, void *v)
{
    (void)ctx;
    cy_free(v);
}

/* Empty a map whose values are cy_malloc'd (the cache, the last uses). */
static void map_empty(cy_map *m)
{
    cy_map_each(m, free_value, NULL);
    cy_map_fini(m);
    cy_map_init(m);
}

static void cache_clear(cy_registry *r)
{
    map_empty(&r->cache);
    map_empty(&r->devs);
}

static void read_begin(cy_registry *r);
static void cache_version(cy_registry *r, int64_t now);

/* With shared reads on: make sure the shared read transaction is open and
 * the cache was checked against its snapshot (PRAGMA data_version inside
 * it, once per transaction). Then the cache holds what the snapshot holds:
 * lookups may use it and the snapshot alike. r->snap_checked says whether
 * that worked (a failure leaves it false: nothing cached is used). */
static void snap_check(cy_registry *r)
{
    if (!r->share_reads || (r->reading && r->snap_checked)) return;
    if (closed(r, READS)) return;
    read_begin(r);
    if (!r->reading) return;
    r->recheck_now = false;
    cache_version(r, cy_mono_ms());
}

/* Is the cache still what the file holds? At most every RECHECK_MS, read
 * PRAGMA data_version (a read transaction: it changes when another
 * connection commits) and drop the whole cache if it moved. Outside any
 * shared read, so the version is the file's latest, not an old snapshot's;
 * after cy_registry_fresh at once, inside the new shared snapshot (the one
 * the lookups that follow read from). A failed read keeps the cache (valid
 * as of the last read) and is tried again RECHECK_MS later. */
static void cache_recheck(cy_registry *r)
{
    int64_t now = cy_mono_ms();
    if (r->recheck_now && r->share_reads) {
        snap_check(r);
        return;
    }
    if (!r->recheck_now && r->version >= 0 && now - r->checked_ms < RECHECK_MS) return;
    if (closed(r, READS)) return;
    cy_registry_end_reads(r);
    r->recheck_now = false;
    cache_version(r, now);
}

/* Read PRAGMA data_version (in the shared transaction if one is open, or
 * on its own) and drop the cache if it moved. */
static void cache_version(cy_registry *r, int64_t now)
{
    r->checked_ms = now;
    sqlite3_stmt *st = r->st[ST_VERSION];
    if (sqlite3_step(st) == SQLITE_ROW) {
        int64_t v = sqlite3_column_int64(st, 0);
        if (v != r->version) cache_clear(r);
        r->version = v;
        r->snap_checked = r->reading;
    } else {
        fail(r, READS, "data_version");
    }
    sqlite3_reset(st);
}

static const cached *cache_get(cy_registry *r, char kind, const char *id, size_t id_len)
{
    char key[1 + CY_DEVICE_ID_LEN];
    if (id_len > CY_DEVICE_ID_LEN) return NULL;
    key[0] = kind;
    memcpy(key + 1, id, id_len);
    return cy_map_get(&r->cache, key, 1 + id_len);
}

/* Remember a row read from the file (out of memory: not remembered). */
static void cache_put(cy_registry *r, char kind, const char *id, size_t id_len, const uint8_t *salt,
                      const uint8_t *hash, unsigned scope, int64_t expires_at)
{
    if (id_len > CY_DEVICE_ID_LEN || r->version < 0) return;
    if (r->cache.count >= CACHE_MAX) cache_clear(r);
    cached *c = cy_malloc(sizeof(*c));
    if (!c) return;
    c->key[0] = kind;
    memcpy(c->key + 1, id, id_len);
    c->klen = (uint8_t)(1 + id_len);
    c->scope = scope;
    c->expires_at = expires_at;
    memcpy(c->salt, salt, SALT_BYTES);
    memcpy(c->hash, hash, HASH_BYTES);
    if (cy_map_put(&r->cache, c->key, c->klen, c)) cy_free(c);
}

static void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

static int secret_hash(cy_registry *r, const uint8_t *salt, const uint8_t *secret,
                       size_t secret_len, uint8_t out[HASH_BYTES]);

/* The HMAC-SHA256 context, used once here so that OpenSSL loads what it
 * needs at start rather than under the first CONNECT. */
static int mac_open(cy_registry *r)
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    r->mac = mac ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac); /* the context holds its own reference */
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (!r->mac || !EVP_MAC_CTX_set_params(r->mac, params)) {
        cy_error(NULL, "store: registry: HMAC-SHA256 unavailable");
        return CY_EIO;
    }
    static const uint8_t zero[SALT_BYTES];
    uint8_t out[HASH_BYTES];
    return secret_hash(r, zero, zero, sizeof(zero), out);
}

static int cipher_open(cy_registry *r);
static int key_path_make(const char *path, char **out);
static int key_load(cy_registry *r, const char **why);

/* ---- open / close ---- */

int cy_registry_open(const char *path, cy_registry **out)
{
    if (!path || !out) return CY_EINVAL;
    *out = NULL;
    cy_registry *r = cy_calloc(1, sizeof(*r));
    if (!r) return CY_ENOMEM;
    cy_map_init(&r->cache);
    cy_map_init(&r->devs);
    cy_map_init(&r->used);
    r->version = -1;
    static const cy_db_schema schema = {"registry", SCHEMA_VERSION, schema_v6, migrations, false};
    int rc = cy_db_open(path, true, &schema, sql, N_ST, &r->db, r->st);
    if (rc) goto fail;
    for (int i = 0; i < CY_RH_N; i++)
        if (sqlite3_prepare_v3(r->db, cy_registry_hooks_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                               &r->hook_st[i], NULL) != SQLITE_OK) {
            rc = cy_db_fail(r->db, "registry", "prepare webhook statements");
            goto fail;
        }
    rc = mac_open(r);
    if (rc) goto fail;
    if ((rc = cipher_open(r)) || (rc = key_path_make(path, &r->key_path))) goto fail;
    /* No key file yet is the usual state of a node before its first PSK;
     * one that cannot be read is said now, and is not fatal: only PSKs
     * need it. */
    const char *why = NULL;
    if (key_load(r, &why) == CY_EIO)
        cy_error(NULL, "store: registry: key file %s: %s: DTLS PSKs cannot be read or issued",
                 r->key_path, why);
    cache_recheck(r); /* the version the cache starts from */
    *out = r;
    return 0;
fail:
    cy_registry_close(r);
    return rc;
}

static void used_clear(cy_registry *r);

void cy_registry_close(cy_registry *r)
{
    if (!r) return;
    cy_registry_end_reads(r);
    /* The uses not yet written (a failure is logged, and they are lost). */
    if (r->db && r->used.count) cy_registry_token_flush(r, cy_wall_ms(), true);
    used_clear(r);
    cy_map_fini(&r->used);
    cache_clear(r);
    cy_map_fini(&r->cache);
    cy_map_fini(&r->devs);
    EVP_MAC_CTX_free(r->mac);
    EVP_CIPHER_CTX_free(r->cctx);
    EVP_CIPHER_free(r->gcm);
    cy_free(r->key_path);
    OPENSSL_cleanse(r->key, sizeof(r->key));
    for (int i = 0; i < N_ST; i++)
        sqlite3_finalize(r->st[i]);
    for (int i = 0; i < CY_RH_N; i++)
        sqlite3_finalize(r->hook_st[i]);
    if (r->db && sqlite3_close(r->db) != SQLITE_OK) fail(r, READS, "close");
    cy_free(r);
}

void cy_registry_share_reads(cy_registry *r, bool on)
{
    if (!r) return;
    if (!on) cy_registry_end_reads(r);
    r->share_reads = on;
    /* Who shares reads serves a loop: it must not wait out a CLI's lock. */
    if (on && !r->busy_set) sqlite3_busy_timeout(r->db, CY_REGISTRY_LOOP_BUSY_MS);
}

void cy_registry_set_busy_timeout(cy_registry *r, unsigned ms)
{
    if (!r) return;
    r->busy_set = true;
    sqlite3_busy_timeout(r->db, (int)(ms < CY_DB_BUSY_MS ? ms : CY_DB_BUSY_MS));
}

void cy_registry_fresh(cy_registry *r)
{
    if (!r) return;
    cy_registry_end_reads(r);
    r->recheck_now = true;
}

void cy_registry_end_reads(cy_registry *r)
{
    if (!r || !r->reading) return;
    r->reading = false;
    r->snap_checked = false;
    /* COMMIT of a read-only transaction only drops the read lock; should it
     * fail, sqlite3_reset leaves autocommit on all the same. */
    if (sqlite3_step(r->st[ST_READ_END]) != SQLITE_DONE) fail(r, READS, "end of shared read");
    sqlite3_reset(r->st[ST_READ_END]);
}

/* ---- helpers ---- */

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
}

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

/* 1..CY_DEVICE_NAME_MAX name characters (the rule of device and token names). */
static bool name_chars_valid(const char *name)
{
    size_t n = strnlen(name, CY_DEVICE_NAME_MAX + 1);
    if (n == 0 || n > CY_DEVICE_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++)
        if (!name_char(name[i])) return false;
    return true;
}

static bool name_valid(const char *name)
{
    return name_chars_valid(name) &&
           !(strlen(name) == CY_DEVICE_ID_LEN && is_lower_hex(name, CY_DEVICE_ID_LEN));
}

static void hex(char *out, const uint8_t *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int random_bytes(uint8_t *p, size_t n)
{
    if (RAND_bytes(p, (int)n) == 1) return 0;
    cy_error(NULL, "store: registry: RAND_bytes failed");
    return CY_EIO;
}

/* HMAC-SHA256(key = salt, data = secret). */
static int secret_hash(cy_registry *r, const uint8_t *salt, const uint8_t *secret,
                       size_t secret_len, uint8_t out[HASH_BYTES])
{
    size_t len = 0;
    if (EVP_MAC_init(r->mac, salt, SALT_BYTES, NULL) &&
        EVP_MAC_update(r->mac, secret_len ? secret : (const uint8_t *)"", secret_len) &&
        EVP_MAC_final(r->mac, out, &len, HASH_BYTES) && len == HASH_BYTES)
        return 0;
    cy_error(NULL, "store: registry: HMAC-SHA256 failed");
    return CY_EIO;
}

static int copy_device(sqlite3_stmt *st, cy_device *out)
{
    const char *id = (const char *)sqlite3_column_text(st, 0);
    const char *name = (const char *)sqlite3_column_text(st, 1);
    size_t id_len = (size_t)sqlite3_column_bytes(st, 0);
    size_t name_len = (size_t)sqlite3_column_bytes(st, 1);
    if (!id || !name || id_len != CY_DEVICE_ID_LEN || name_len > CY_DEVICE_NAME_MAX) {
        cy_error(NULL, "store: registry: corrupt device row");
        return CY_ESTORE;
    }
    memcpy(out->id, id, id_len + 1);
    memcpy(out->name, name, name_len + 1);
    out->created_at = sqlite3_column_int64(st, 2);
    out->internal = sqlite3_column_int(st, 3) != 0;
    return 0;
}

/* An internal name: name characters or ':', 1..CY_DEVICE_NAME_MAX of them,
 * at least one ':' (which no user name has). */
static bool internal_name_valid(const char *name)
{
    size_t n = strnlen(name, CY_DEVICE_NAME_MAX + 1);
    if (n == 0 || n > CY_DEVICE_NAME_MAX || !memchr(name, ':', n)) return false;
    for (size_t i = 0; i < n; i++)
        if (!name_char(name[i]) && name[i] != ':') return false;
    return true;
}

/* ---- the key file and sealed PSKs ---- */

static int sync_dir(const char *dir);

/* AES-256-GCM, fetched once (as the HMAC is: a fetch per call costs). */
static int cipher_open(cy_registry *r)
{
    r->gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    r->cctx = r->gcm ? EVP_CIPHER_CTX_new() : NULL;
    if (r->cctx) return 0;
    cy_error(NULL, "store: registry: AES-256-GCM unavailable");
    return CY_EIO;
}

/* KEY_FILE in the folder of the registry file path, into *out (caller
 * frees with cy_free); NULL for an in-memory registry, whose key is made in
 * memory and dies with the handle. */
static int key_path_make(const char *path, char **out)
{
    *out = NULL;
    if (!path[0] || !strcmp(path, ":memory:")) return 0;
    const char *slash = strrchr(path, '/');
    size_t dlen = slash ? (size_t)(slash - path) + 1 : 0;
    char *p = cy_malloc(dlen + sizeof(KEY_FILE));
    if (!p) return CY_ENOMEM;
    memcpy(p, path, dlen);
    memcpy(p + dlen, KEY_FILE, sizeof(KEY_FILE));
    *out = p;
    return 0;
}

/* Read the key file into r->key. 0; CY_ENOENT if there is none (or no
 * file to have: in memory); CY_EIO if it cannot be read or is not
 * KEY_BYTES bytes long, *why saying which (static text). Logs nothing. */
static int key_load(cy_registry *r, const char **why)
{
    *why = "";
    if (!r->key_path) return CY_ENOENT;
    int fd = open(r->key_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return CY_ENOENT;
        *why = strerror(errno);
        return CY_EIO;
    }
    uint8_t buf[KEY_BYTES];
    struct stat sb;
    ssize_t n = -1;
    int rc = CY_EIO;
    *why = "not a regular file of 32 bytes";
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == KEY_BYTES) {
        do
            n = read(fd, buf, sizeof(buf));
        while (n < 0 && errno == EINTR);
        if (n < 0) *why = strerror(errno);
    }
    close(fd);
    if (n == KEY_BYTES) {
        memcpy(r->key, buf, KEY_BYTES);
        r->have_key = true;
        rc = 0;
        if (sb.st_mode & (S_IRWXG | S_IRWXO))
            cy_warn(NULL,
                    "store: registry: key file %s is readable by others (mode %03o): it "
                    "opens every device's DTLS PSK; chmod 600 it",
                    r->key_path, (unsigned)(sb.st_mode & 0777));
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    return rc;
}

/* A private file's bytes, in a fresh temporary file beside path (mkstemp:
 * O_CREAT | O_EXCL, so nothing existing is opened or followed; mode made
 * exactly 0600, whatever the umask), written and synced: *tmp_out is its
 * name (caller frees it with cy_free, and renames, links or unlinks the
 * file). On failure nothing is left and *tmp_out is NULL. */
static int private_tmp(const char *path, const void *bytes, size_t n, char **tmp_out)
{
    static const char suffix[] = ".XXXXXX";
    size_t plen = strlen(path), off = 0;
    char *tmp = cy_malloc(plen + sizeof(suffix));
    *tmp_out = NULL;
    if (!tmp) return CY_ENOMEM;
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, suffix, sizeof(suffix));
    int rc = 0, fd = mkstemp(tmp);
    if (fd < 0) {
        rc = -errno;
        cy_free(tmp);
        return rc;
    }
    if (fchmod(fd, S_IRUSR | S_IWUSR)) rc = -errno;
    while (!rc && off < n) {
        ssize_t w = write(fd, (const uint8_t *)bytes + off, n - off);
        if (w > 0)
            off += (size_t)w;
        else if (w == 0)
            rc = CY_EIO;
        else if (errno != EINTR)
            rc = -errno;
    }
    if (!rc && fsync(fd)) rc = -errno;
    if (close(fd) && !rc) rc = -errno;
    if (rc) {
        unlink(tmp);
        cy_free(tmp);
        return rc;
    }
    *tmp_out = tmp;
    return 0;
}

/* Cut a file name down to its directory, in place ("x" -> ".", "/x" -> "/"). */
static void dir_of(char *name)
{
    char *slash = strrchr(name, '/');
    if (!slash)
        strcpy(name, ".");
    else
        slash[slash == name] = '\0';
}

/* Make the key file: 32 random bytes written to a fresh temporary file
 * beside it (mkstemp: O_CREAT | O_EXCL, mode exactly 0600), synced, then
 * linked to its name. link() fails if the name exists, so two processes
 * making it at once end up with one file, which both then use; and nobody
 * ever reads a half-written key. Logs its failures; CY_EIO. */
static int key_create(cy_registry *r)
{
    uint8_t key[KEY_BYTES];
    if (random_bytes(key, sizeof(key))) return CY_EIO;
    if (!r->key_path) {
        memcpy(r->key, key, KEY_BYTES);
        r->have_key = true;
        OPENSSL_cleanse(key, sizeof(key));
        return 0;
    }
    char *tmp = NULL;
    const char *what = "temporary file";
    int rc = private_tmp(r->key_path, key, KEY_BYTES, &tmp);
    if (rc) goto out;
    what = "link";
    if (link(tmp, r->key_path)) rc = -errno;
    unlink(tmp);
    if (rc == -EEXIST) {
        /* Another process made it first: theirs is the node's key. */
        const char *why;
        rc = key_load(r, &why);
        if (rc) {
            cy_error(NULL, "store: registry: key file %s: %s", r->key_path, why);
            rc = CY_EIO;
        }
        goto done;
    }
    if (rc) goto out;
    /* The file is in place: a directory that cannot be synced is said, and
     * the key used (other processes may already have read it). */
    dir_of(tmp);
    if ((rc = sync_dir(tmp)))
        cy_warn(NULL,
                "store: registry: fsync of %s: %s: the new key file %s may not survive a "
                "power cut",
                tmp, cy_strerror(rc), r->key_path);
    memcpy(r->key, key, KEY_BYTES);
    r->have_key = true;
    rc = 0;
    cy_info(NULL, "store: registry: made the key file %s (back it up with the registry)",
            r->key_path);
    goto done;
out:
    cy_error(NULL, "store: registry: cannot make the key file %s (%s): %s", r->key_path, what,
             cy_strerror(rc));
    if (rc != CY_ENOMEM) rc = CY_EIO;
done:
    OPENSSL_cleanse(key, sizeof(key));
    cy_free(tmp);
    return rc;
}

/* Whether any device has a sealed PSK: 0 (and *any), or CY_ESTORE. */
static int psk_any(cy_registry *r, bool *any)
{
    sqlite3_stmt *st = r->st[ST_PSK_ANY];
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        *any = sqlite3_column_int(st, 0) != 0;
    else
        rc = fail(r, READS, "psk key file");
    done(st);
    return rc;
}

/* The key, for issuing a PSK: read it, or make the file if there is none.
 * Not while PSKs sealed with a key exist, though: then the file was lost
 * or not restored with the registry, and a new key would leave those PSKs
 * unreadable for good, and be overwritten by the restore. */
static int key_need(cy_registry *r)
{
    if (r->have_key) return 0;
    const char *why;
    int rc = key_load(r, &why);
    if (rc == CY_ENOENT) {
        bool sealed = false;
        if ((rc = psk_any(r, &sealed))) return rc;
        if (!sealed) return key_create(r);
        cy_error(NULL,
                 "store: registry: the key file %s is missing but devices have PSKs sealed "
                 "with it: restore it with the registry (if it is lost for good, clear them "
                 "with sqlite3 'UPDATE devices SET psk = NULL' and issue new ones)",
                 r->key_path ? r->key_path : KEY_FILE);
        return CY_EIO;
    }
    if (rc) {
        cy_error(NULL, "store: registry: key file %s: %s: no PSK can be issued", r->key_path, why);
        rc = CY_EIO;
    }
    return rc;
}

int cy_registry_subkey(cy_registry *r, const char *label, bool make,
                       uint8_t out[CY_REGISTRY_SUBKEY_LEN])
{
    if (!r || !label || !out) return CY_EINVAL;
    int rc = 0;
    if (make) {
        cy_registry_end_reads(r);
        rc = key_need(r);
    } else if (!r->have_key) {
        /* Read again at most every RECHECK_MS: a stranger's request must
         * not cost a file open each. */
        int64_t now = cy_mono_ms();
        rc = CY_EIO;
        if (!r->key_tried || now - r->key_tried_ms >= RECHECK_MS) {
            const char *why;
            r->key_tried = true;
            r->key_tried_ms = now;
            rc = key_load(r, &why) ? CY_EIO : 0;
        }
    }
    if (rc) return rc == CY_ESTORE || rc == CY_ENOMEM ? rc : CY_EIO;
    size_t len = 0;
    if (EVP_MAC_init(r->mac, r->key, KEY_BYTES, NULL) &&
        EVP_MAC_update(r->mac, (const uint8_t *)label, strlen(label)) &&
        EVP_MAC_final(r->mac, out, &len, CY_REGISTRY_SUBKEY_LEN) && len == CY_REGISTRY_SUBKEY_LEN)
        return 0;
    cy_error(NULL, "store: registry: HMAC-SHA256 failed (subkey)");
    return CY_EIO;
}

/* A PSK failure of device id, logged at most once per PSK_LOG_MS per
 * handle (a device retries its handshake at will), with the count held
 * back since the last line. */
static void psk_log(cy_registry *r, const char *id, size_t id_len, const char *what)
{
    int64_t now = cy_mono_ms();
    if (r->psk_logged && now - r->psk_log_ms < PSK_LOG_MS) {
        r->psk_held++;
        return;
    }
    char client[CY_DEVICE_ID_LEN + 1], more[80] = "";
    size_t n = id_len < CY_DEVICE_ID_LEN ? id_len : CY_DEVICE_ID_LEN;
    memcpy(client, id, n);
    client[n] = '\0';
    if (r->psk_held)
        snprintf(more, sizeof(more), " (%llu more PSK failures since the last line)",
                 (unsigned long long)r->psk_held);
    cy_error(client, "store: registry: cannot read the device's DTLS PSK: %s%s", what, more);
    r->psk_logged = true;
    r->psk_log_ms = now;
    r->psk_held = 0;
}

/* The key, for reading a PSK: loaded at open, or read now if another
 * process has made it since (tried at most every RECHECK_MS). */
static int key_get(cy_registry *r, const char *id, size_t id_len)
{
    if (r->have_key) return 0;
    int64_t now = cy_mono_ms();
    const char *why = "no key file (read again shortly)";
    int rc = CY_EIO;
    if (!r->key_tried || now - r->key_tried_ms >= RECHECK_MS) {
        r->key_tried = true;
        r->key_tried_ms = now;
        rc = key_load(r, &why);
        if (rc == CY_ENOENT) why = "missing";
    }
    if (rc == 0) return 0;
    char what[160];
    snprintf(what, sizeof(what), "%s: %s", r->key_path ? r->key_path : KEY_FILE, why);
    psk_log(r, id, id_len, what);
    return CY_EIO;
}

/* Seal the PSK text psk (CY_DEVICE_PSK_LEN characters) of device id
 * (CY_DEVICE_ID_LEN characters, the additional data) into out:
 * nonce | ciphertext | tag. The key must be loaded. 0 or CY_EIO. */
static int psk_seal(cy_registry *r, const char *id, const char *psk, uint8_t out[SEALED_BYTES])
{
    if (random_bytes(out, NONCE_BYTES)) return CY_EIO;
    EVP_CIPHER_CTX *c = r->cctx;
    uint8_t *ct = out + NONCE_BYTES, *tag = ct + CY_DEVICE_PSK_LEN;
    int len = 0, fin = 0;
    if (EVP_EncryptInit_ex2(c, r->gcm, r->key, out, NULL) == 1 &&
        EVP_EncryptUpdate(c, NULL, &len, (const uint8_t *)id, CY_DEVICE_ID_LEN) == 1 &&
        EVP_EncryptUpdate(c, ct, &len, (const uint8_t *)psk, CY_DEVICE_PSK_LEN) == 1 &&
        len == CY_DEVICE_PSK_LEN && EVP_EncryptFinal_ex(c, ct + len, &fin) == 1 && fin == 0 &&
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TAG_BYTES, tag) == 1)
        return 0;
    cy_error(NULL, "store: registry: AES-256-GCM sealing failed");
    return CY_EIO;
}

/* Open a sealed PSK of device id[0..id_len) into out. 0, or CY_EIO if it
 * does not authenticate (tampered, moved from another row, another key). */
static int psk_unseal(cy_registry *r, const char *id, size_t id_len, const uint8_t *sealed,
                      uint8_t out[CY_DEVICE_PSK_LEN])
{
    EVP_CIPHER_CTX *c = r->cctx;
    const uint8_t *ct = sealed + NONCE_BYTES, *tag = ct + CY_DEVICE_PSK_LEN;
    uint8_t text[CY_DEVICE_PSK_LEN + TAG_BYTES];
    int len = 0, fin = 0;
    bool ok = EVP_DecryptInit_ex2(c, r->gcm, r->key, sealed, NULL) == 1 &&
              EVP_DecryptUpdate(c, NULL, &len, (const uint8_t *)id, (int)id_len) == 1 &&
              EVP_DecryptUpdate(c, text, &len, ct, CY_DEVICE_PSK_LEN) == 1 &&
              len == CY_DEVICE_PSK_LEN &&
              EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, TAG_BYTES, (void *)tag) == 1 &&
              EVP_DecryptFinal_ex(c, text + len, &fin) == 1 && fin == 0 &&
              is_lower_hex((const char *)text, CY_DEVICE_PSK_LEN);
    if (ok) memcpy(out, text, CY_DEVICE_PSK_LEN);
    OPENSSL_cleanse(text, sizeof(text));
    return ok ? 0 : CY_EIO;
}

/* Draw a new PSK for device id, seal it and store it in the row (ST_PSK_SET,
 * the row's internal flag given); its text into psk. Without the key
 * (have_key false) the row gets none (NULL) and psk is "". In the caller's
 * transaction, if any. 0, CY_ENOENT (no such row), CY_EIO, CY_ESTORE. */
static int psk_store(cy_registry *r, const char *id, int internal, char psk[CY_DEVICE_PSK_LEN + 1],
                     const char *what)
{
    uint8_t raw[PSK_BYTES], sealed[SEALED_BYTES];
    int rc = 0;
    psk[0] = '\0';
    if (r->have_key) {
        rc = random_bytes(raw, sizeof(raw));
        if (!rc) {
            hex(psk, raw, PSK_BYTES);
            rc = psk_seal(r, id, psk, sealed);
        }
        OPENSSL_cleanse(raw, sizeof(raw));
        if (rc) return rc;
    }
    sqlite3_stmt *st = r->st[ST_PSK_SET];
    if (sqlite3_bind_text(st, 1, id, CY_DEVICE_ID_LEN, SQLITE_STATIC) ||
        (r->have_key ? sqlite3_bind_blob(st, 2, sealed, SEALED_BYTES, SQLITE_STATIC)
                     : sqlite3_bind_null(st, 2)) ||
        sqlite3_bind_int(st, 3, internal) || sqlite3_step(st) != SQLITE_DONE)
        rc = fail(r, WRITES, what);
    else
        rc = sqlite3_changes(r->db) ? 0 : CY_ENOENT;
    done(st);
    return rc;
}

/* With shared reads on, begin the pass's read transaction if none is open
 * (a failed BEGIN leaves autocommit: the lookup then reads on its own). */
static void read_begin(cy_registry *r)
{
    if (!r->share_reads || r->reading) return;
    r->reading = sqlite3_step(r->st[ST_READ_BEGIN]) == SQLITE_DONE;
    sqlite3_reset(r->st[ST_READ_BEGIN]);
}

/* ---- devices ---- */

int cy_registry_device_add(cy_registry *r, const char *name, char id_out[CY_DEVICE_ID_LEN + 1],
                           char secret_out[CY_DEVICE_SECRET_LEN + 1],
                           char psk_out[CY_DEVICE_PSK_LEN + 1])
{
    if (!name || !id_out || !secret_out) return CY_EINVAL;
    cy_registry_end_reads(r); /* the insert commits on its own */
    id_out[0] = secret_out[0] = '\0';
    if (psk_out) psk_out[0] = '\0';
    if (!name_valid(name)) return CY_EINVAL;
    if (closed(r, WRITES)) return CY_ESTORE;
    int rc = key_need(r);
    if (rc) return rc;

    uint8_t raw[ID_BYTES + SECRET_BYTES + SALT_BYTES + PSK_BYTES], hash[HASH_BYTES];
    uint8_t sealed[SEALED_BYTES];
    char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1], psk[CY_DEVICE_PSK_LEN + 1];
    const uint8_t *salt = raw + ID_BYTES + SECRET_BYTES;
    sqlite3_stmt *st = r->st[ST_ADD];
    /* 96-bit ids do not collide in practice; if one ever does, draw again. */
    for (int attempt = 0;; attempt++) {
        if ((rc = random_bytes(raw, sizeof(raw)))) goto out;
        hex(id, raw, ID_BYTES);
        hex(secret, raw + ID_BYTES, SECRET_BYTES);
        hex(psk, salt + SALT_BYTES, PSK_BYTES);
        if ((rc = secret_hash(r, salt, (const uint8_t *)secret, CY_DEVICE_SECRET_LEN, hash)))
            goto out;
        /* Sealed under this id: a new draw of the id seals again. */
        if ((rc = psk_seal(r, id, psk, sealed))) goto out;
        if (sqlite3_bind_text(st, 1, id, CY_DEVICE_ID_LEN, SQLITE_STATIC) ||
            sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC) ||
            sqlite3_bind_blob(st, 3, salt, SALT_BYTES, SQLITE_STATIC) ||
            sqlite3_bind_blob(st, 4, hash, HASH_BYTES, SQLITE_STATIC) ||
            sqlite3_bind_int64(st, 5, cy_wall_ms()) ||
            sqlite3_bind_blob(st, 6, sealed, SEALED_BYTES, SQLITE_STATIC)) {
            rc = fail(r, WRITES, "device_add");
            done(st);
            goto out;
        }
        int sr = sqlite3_step(st);
        int ext = sqlite3_extended_errcode(r->db);
        if (sr == SQLITE_DONE) {
            rc = 0;
        } else if (ext == SQLITE_CONSTRAINT_UNIQUE) {
            rc = CY_EEXIST; /* the name: the id is the primary key */
        } else if (ext == SQLITE_CONSTRAINT_PRIMARYKEY && attempt < 3) {
            done(st);
            continue;
        } else {
            rc = fail(r, WRITES, "device_add");
        }
        done(st);
        break;
    }
    if (!rc) {
        memcpy(id_out, id, sizeof(id));
        memcpy(secret_out, secret, sizeof(secret));
        if (psk_out) memcpy(psk_out, psk, sizeof(psk));
    }
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(secret, sizeof(secret));
    OPENSSL_cleanse(psk, sizeof(psk));
    return rc;
}

/* The scopes a token row may hold: a non-empty set of user scopes, or the
 * internal scope alone. */
static bool scopes_valid(int64_t scopes)
{
    return (scopes > 0 && (scopes & ~(int64_t)CY_SCOPE_ALL) == 0) || scopes == CY_SCOPE_INTERNAL;
}

/* The row of id, looked up with st (columns: salt, hash, extra: a token's
 * scopes or a device's internal flag, and for a token its expiry), from the
 * cache or else the file (and then cached), copied into *row. kind: 'd' or
 * 't'. 1 found, 0 absent, CY_ESTORE. */
static int row_get(cy_registry *r, sqlite3_stmt *st, char kind, const char *id, size_t id_len,
                   const char *what, cached *row)
{
    cache_recheck(r);
    const cached *c = cache_get(r, kind, id, id_len);
    if (c) {
        *row = *c;
        return 1;
    }
    if (closed(r, READS)) return CY_ESTORE;
    read_begin(r);
    int rc = 0;
    if (sqlite3_bind_text(st, 1, id, (int)id_len, SQLITE_STATIC)) {
        rc = fail(r, READS, what);
        goto out;
    }
    int sr = sqlite3_step(st);
    if (sr == SQLITE_ROW) {
        int64_t extra = sqlite3_column_int64(st, 2);
        int64_t expires = kind == 't' ? sqlite3_column_int64(st, 3) : 0;
        bool extra_ok =
            kind == 't' ? scopes_valid(extra) && expires >= 0 : (extra == 0 || extra == 1);
        if (sqlite3_column_bytes(st, 0) != SALT_BYTES ||
            sqlite3_column_bytes(st, 1) != HASH_BYTES || !extra_ok) {
            cy_error(NULL, "store: registry: corrupt row %.*s (%s)", (int)id_len, id, what);
            rc = CY_ESTORE;
            goto out;
        }
        memcpy(row->salt, sqlite3_column_blob(st, 0), SALT_BYTES);
        memcpy(row->hash, sqlite3_column_blob(st, 1), HASH_BYTES);
        row->scope = (unsigned)extra;
        row->expires_at = expires;
        cache_put(r, kind, id, id_len, row->salt, row->hash, row->scope, expires);
        rc = 1;
    } else if (sr != SQLITE_DONE) {
        rc = fail(r, READS, what);
    }
out:
    done(st);
    return rc;
}

/* Look the row for id up with st and check secret against it. An id that
 * is absent (or not looked up: lookup false) costs one HMAC too, against a
 * zero row, so the answer's timing does not tell which ids exist. 0,
 * CY_ENOENT, CY_EACCES, CY_ESTORE. *token (tokens, else NULL) gets the
 * scopes and expiry of a matching row. */
static int check_secret(cy_registry *r, sqlite3_stmt *st, bool lookup, const char *id,
                        size_t id_len, const uint8_t *secret, size_t secret_len, const char *what,
                        cached *token)
{
    static const uint8_t dummy_salt[SALT_BYTES];
    static const uint8_t dummy_hash[HASH_BYTES];
    const uint8_t *salt = dummy_salt, *want = dummy_hash;
    cached row;
    int found = 0;
    if (lookup) {
        found = row_get(r, st, token ? 't' : 'd', id, id_len, what, &row);
        if (found < 0) return found;
        if (found) {
            salt = row.salt;
            want = row.hash;
            if (token) *token = row;
        }
    }
    uint8_t got[HASH_BYTES];
    int rc = secret_hash(r, salt, secret, secret_len, got);
    if (rc) return rc;
    bool same = CRYPTO_memcmp(got, want, HASH_BYTES) == 0;
    return !found ? CY_ENOENT : same ? 0 : CY_EACCES;
}

int cy_registry_device_check(cy_registry *r, const char *id, size_t id_len, const uint8_t *secret,
                             size_t secret_len)
{
    if ((!id && id_len) || (!secret && secret_len)) return CY_EINVAL;
    /* Only a well-formed id can exist: the others skip the lookup. */
    bool lookup = id_len == CY_DEVICE_ID_LEN;
    return check_secret(r, r->st[ST_CHECK], lookup, id, id_len, secret, secret_len, "device_check",
                        NULL);
}

int cy_registry_device_psk(cy_registry *r, const char *id, size_t id_len, uint8_t *key, size_t cap)
{
    if (!r || (!id && id_len) || !key) return CY_EINVAL;
    if (cap < CY_DEVICE_PSK_LEN) return CY_ERANGE;
    /* Only a well-formed id can exist: the others cost no lookup. */
    if (id_len != CY_DEVICE_ID_LEN || !is_lower_hex(id, id_len)) return CY_ENOENT;
    if (closed(r, READS)) return CY_ESTORE;
    read_begin(r);
    sqlite3_stmt *st = r->st[ST_PSK_GET];
    uint8_t sealed[SEALED_BYTES];
    size_t n = 0;
    int rc;
    if (sqlite3_bind_text(st, 1, id, (int)id_len, SQLITE_STATIC)) {
        rc = fail(r, READS, "device_psk");
    } else {
        int sr = sqlite3_step(st);
        if (sr == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
            const void *b = sqlite3_column_blob(st, 0);
            n = (size_t)sqlite3_column_bytes(st, 0);
            if (b && n == SEALED_BYTES) memcpy(sealed, b, SEALED_BYTES);
            rc = 1;
        } else {
            /* No such device, or one made before PSKs that has none yet. */
            rc = sr == SQLITE_ROW || sr == SQLITE_DONE ? CY_ENOENT : fail(r, READS, "device_psk");
        }
    }
    done(st);
    if (rc < 0) return rc;
    if (n != SEALED_BYTES) {
        psk_log(r, id, id_len, "its stored record has the wrong length (damaged)");
        return CY_EIO;
    }
    if (key_get(r, id, id_len)) return CY_EIO;
    if (psk_unseal(r, id, id_len, sealed, key)) {
        psk_log(r, id, id_len,
                "its stored record does not open with the key file (damaged or tampered with, "
                "or " KEY_FILE " is not the one it was sealed with)");
        return CY_EIO;
    }
    return CY_DEVICE_PSK_LEN;
}

/* One device row by key with statement st: 0, CY_ENOENT or CY_ESTORE.
 * kind 0, or a handle without shared reads: the file's latest (a caller
 * about to write must not hold a snapshot). kind 'g' or 'i' (a public
 * get) with shared reads on: in the shared snapshot (begun after the
 * owner's last cy_registry_end_reads or cy_registry_fresh) and from the
 * cache checked against it, then cached: a shard's gets of a pass cost
 * one read transaction at most, and SQLite only for a device not seen
 * since the file last changed. */
static int get_device(cy_registry *r, sqlite3_stmt *st, char kind, const char *key,
                      const char *what, cy_device *out)
{
    char ck[2 + CY_DEVICE_NAME_MAX];
    size_t klen = 0;
    if (kind && r->share_reads) {
        snap_check(r);
        size_t n = strnlen(key, CY_DEVICE_NAME_MAX + 1);
        if (r->snap_checked && n <= CY_DEVICE_NAME_MAX) {
            ck[0] = kind;
            memcpy(ck + 1, key, n);
            klen = 1 + n;
            const devrow *c = cy_map_get(&r->devs, ck, klen);
            if (c) {
                *out = c->d;
                return 0;
            }
        }
        read_begin(r);
    } else {
        cy_registry_end_reads(r);
    }
    if (closed(r, READS)) return CY_ESTORE;
    int rc;
    if (sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC)) {
        rc = fail(r, READS, what);
    } else {
        int sr = sqlite3_step(st);
        rc = sr == SQLITE_ROW    ? copy_device(st, out)
             : sr == SQLITE_DONE ? CY_ENOENT
                                 : fail(r, READS, what);
    }
    done(st);
    if (rc == 0 && klen && r->version >= 0) { /* out of memory: not remembered */
        if (r->devs.count >= DEVS_MAX) map_empty(&r->devs);
        devrow *c = cy_malloc(sizeof(*c));
        if (c) {
            memcpy(c->key, ck, klen);
            c->klen = (uint8_t)klen;
            c->d = *out;
            if (cy_map_put(&r->devs, c->key, c->klen, c)) cy_free(c);
        }
    }
    return rc;
}

int cy_registry_device_get(cy_registry *r, const char *id_or_name, cy_device *out)
{
    if (!id_or_name || !out) return CY_EINVAL;
    return get_device(r, r->st[ST_GET], 'g', id_or_name, "device_get", out);
}

/* Run the DELETE statement st with key; CY_ENOENT if it deleted nothing. */
static int delete_by_key(cy_registry *r, sqlite3_stmt *st, const char *key, const char *what)
{
    if (!key) return CY_EINVAL;
    cy_registry_end_reads(r); /* the delete commits on its own */
    if (closed(r, WRITES)) return CY_ESTORE;
    int rc;
    if (sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC))
        rc = fail(r, WRITES, what);
    else if (sqlite3_step(st) != SQLITE_DONE)
        rc = fail(r, WRITES, what);
    else
        rc = sqlite3_changes(r->db) ? 0 : CY_ENOENT;
    done(st);
    /* Our own commit does not move data_version: forget what it removed. */
    cache_clear(r);
    return rc;
}

int cy_registry_device_psk_new(cy_registry *r, const char *id_or_name,
                               char psk_out[CY_DEVICE_PSK_LEN + 1])
{
    if (psk_out) psk_out[0] = '\0';
    if (!r || !id_or_name || !psk_out) return CY_EINVAL;
    cy_device d;
    int rc = get_device(r, r->st[ST_GET], 0, id_or_name, "device_psk_new", &d);
    if (rc) return rc;
    if (closed(r, WRITES)) return CY_ESTORE;
    if ((rc = key_need(r))) return rc;
    /* By id, and a user's still: removed meanwhile, it is CY_ENOENT (ids
     * are never reused). */
    char psk[CY_DEVICE_PSK_LEN + 1];
    rc = psk_store(r, d.id, 0, psk, "device_psk_new");
    if (!rc) memcpy(psk_out, psk, sizeof(psk));
    OPENSSL_cleanse(psk, sizeof(psk));
    return rc;
}

int cy_registry_device_remove(cy_registry *r, const char *id_or_name)
{
    return delete_by_key(r, r->st[ST_REMOVE], id_or_name, "device_remove");
}

int cy_registry_device_rename(cy_registry *r, const char *id_or_name, const char *name,
                              cy_device *out)
{
    if (!r || !id_or_name || !name) return CY_EINVAL;
    if (!name_valid(name)) return CY_EINVAL;
    cy_device d;
    int rc = get_device(r, r->st[ST_GET], 0, id_or_name, "device_rename", &d);
    if (rc) return rc;
    if (closed(r, WRITES)) return CY_ESTORE;
    /* By id, and a user's still: removed meanwhile, it is CY_ENOENT. */
    sqlite3_stmt *st = r->st[ST_RENAME];
    if (sqlite3_bind_text(st, 1, d.id, CY_DEVICE_ID_LEN, SQLITE_STATIC) ||
        sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC)) {
        rc = fail(r, WRITES, "device_rename");
    } else if (sqlite3_step(st) == SQLITE_DONE) {
        rc = sqlite3_changes(r->db) ? 0 : CY_ENOENT;
    } else if (sqlite3_extended_errcode(r->db) == SQLITE_CONSTRAINT_UNIQUE) {
        rc = CY_EEXIST;
    } else {
        rc = fail(r, WRITES, "device_rename");
    }
    done(st);
    /* Our own commit does not move data_version: forget the old name. */
    if (!rc) cache_clear(r);
    if (!rc && out) {
        *out = d;
        snprintf(out->name, sizeof(out->name), "%s", name);
    }
    return rc;
}

int cy_registry_device_list(cy_registry *r, int (*fn)(void *ctx, const cy_device *d), void *ctx)
{
    if (!fn) return CY_EINVAL;
    cy_registry_end_reads(r);
    if (closed(r, READS)) return CY_ESTORE;
    sqlite3_stmt *st = r->st[ST_LIST];
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        cy_device d;
        if (!(rc = copy_device(st, &d))) rc = fn(ctx, &d);
    }
    if (rc == 0 && sr != SQLITE_DONE) rc = fail(r, READS, "device_list");
    done(st);
    return rc;
}

/* ---- internal devices ---- */

static int exec_st(cy_registry *r, int which, const char *what);
static void rollback(cy_registry *r);

int cy_registry_device_internal(cy_registry *r, const char *id, size_t id_len)
{
    if (!r || (!id && id_len)) return CY_EINVAL;
    /* Only a well-formed id can be a device: the others cost no lookup. */
    if (id_len != CY_DEVICE_ID_LEN || !is_lower_hex(id, id_len)) return 0;
    cached row;
    int rc = row_get(r, r->st[ST_CHECK], 'd', id, id_len, "device_internal", &row);
    return rc < 0 ? rc : rc == 1 ? (int)row.scope : 0;
}

int cy_registry_internal_get(cy_registry *r, const char *id, cy_device *out)
{
    if (!r || !id || !out) return CY_EINVAL;
    return get_device(r, r->st[ST_INTERNAL_GET], 'i', id, "internal_get", out);
}

/* Run st (bound with id, and salt and hash when given) to its end. */
static int run_id(cy_registry *r, sqlite3_stmt *st, const char *id, const uint8_t *salt,
                  const uint8_t *hash, const char *what)
{
    int rc = 0;
    if (sqlite3_bind_text(st, 1, id, CY_DEVICE_ID_LEN, SQLITE_STATIC) ||
        (salt && sqlite3_bind_blob(st, 2, salt, SALT_BYTES, SQLITE_STATIC)) ||
        (hash && sqlite3_bind_blob(st, 3, hash, HASH_BYTES, SQLITE_STATIC)) ||
        sqlite3_step(st) != SQLITE_DONE)
        rc = fail(r, WRITES, what);
    done(st);
    return rc;
}

/* The id of the internal device named name into id (1), or 0 if there is
 * none; CY_ESTORE. */
static int internal_by_name(cy_registry *r, const char *name, char id[CY_DEVICE_ID_LEN + 1])
{
    sqlite3_stmt *st = r->st[ST_INTERNAL_BY_NAME];
    int rc = 0;
    if (sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC)) {
        rc = fail(r, READS, "internal_device");
    } else {
        int sr = sqlite3_step(st);
        if (sr == SQLITE_ROW) {
            const char *t = (const char *)sqlite3_column_text(st, 0);
            if (t && sqlite3_column_bytes(st, 0) == CY_DEVICE_ID_LEN) {
                memcpy(id, t, CY_DEVICE_ID_LEN + 1);
                rc = 1;
            } else {
                cy_error(NULL, "store: registry: corrupt device row (internal %s)", name);
                rc = CY_ESTORE;
            }
        } else if (sr != SQLITE_DONE) {
            rc = fail(r, READS, "internal_device");
        }
    }
    done(st);
    return rc;
}

/* A new internal device named name with a fresh id that id_ok takes; its
 * salt and hash given. In the caller's transaction. */
static int internal_insert(cy_registry *r, const char *name, bool (*id_ok)(void *, const char *),
                           void *ctx, const uint8_t *salt, const uint8_t *hash,
                           char id[CY_DEVICE_ID_LEN + 1])
{
    sqlite3_stmt *st = r->st[ST_INTERNAL_ADD];
    int64_t now = cy_wall_ms();
    for (int draw = 0; draw < CY_REGISTRY_INTERNAL_DRAWS; draw++) {
        uint8_t raw[ID_BYTES];
        int rc = random_bytes(raw, sizeof(raw));
        if (rc) return rc;
        hex(id, raw, ID_BYTES);
        if (id_ok && !id_ok(ctx, id)) continue;
        if (sqlite3_bind_text(st, 1, id, CY_DEVICE_ID_LEN, SQLITE_STATIC) ||
            sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC) ||
            sqlite3_bind_blob(st, 3, salt, SALT_BYTES, SQLITE_STATIC) ||
            sqlite3_bind_blob(st, 4, hash, HASH_BYTES, SQLITE_STATIC) ||
            sqlite3_bind_int64(st, 5, now)) {
            rc = fail(r, WRITES, "internal_device");
            done(st);
            return rc;
        }
        int sr = sqlite3_step(st);
        int ext = sqlite3_extended_errcode(r->db);
        done(st);
        if (sr == SQLITE_DONE) return 0;
        if (ext == SQLITE_CONSTRAINT_PRIMARYKEY) continue; /* taken: draw again */
        if (ext == SQLITE_CONSTRAINT_UNIQUE) return CY_EEXIST;
        return fail(r, WRITES, "internal_device");
    }
    id[0] = '\0';
    return CY_ERANGE;
}

int cy_registry_internal_device(cy_registry *r, const char *name,
                                bool (*id_ok)(void *ctx, const char *id), void *ctx,
                                char id_out[CY_DEVICE_ID_LEN + 1],
                                char secret_out[CY_DEVICE_SECRET_LEN + 1],
                                char psk_out[CY_DEVICE_PSK_LEN + 1])
{
    if (psk_out) psk_out[0] = '\0';
    if (!r || !name || !id_out || !secret_out) return CY_EINVAL;
    id_out[0] = secret_out[0] = '\0';
    if (!internal_name_valid(name)) return CY_EINVAL;
    cy_registry_end_reads(r); /* BEGIN IMMEDIATE cannot nest */
    if (closed(r, WRITES)) return CY_ESTORE;
    /* cyan's own MQTT canaries must not stop over a key file only PSKs
     * need: without it (logged) the device is ensured without a PSK. */
    int rc = key_need(r);
    if (rc == CY_EIO)
        cy_warn(NULL, "store: registry: internal device %s gets no DTLS PSK (no key)", name);
    else if (rc)
        return rc;

    uint8_t raw[SECRET_BYTES + SALT_BYTES], hash[HASH_BYTES];
    char id[CY_DEVICE_ID_LEN + 1] = "", secret[CY_DEVICE_SECRET_LEN + 1];
    char psk[CY_DEVICE_PSK_LEN + 1] = "";
    const uint8_t *salt = raw + SECRET_BYTES;
    rc = random_bytes(raw, sizeof(raw));
    if (rc) goto out;
    hex(secret, raw, SECRET_BYTES);
    if ((rc = secret_hash(r, salt, (const uint8_t *)secret, CY_DEVICE_SECRET_LEN, hash))) goto out;
    if ((rc = exec_st(r, ST_BEGIN, "internal_device begin"))) goto out;
    int have = internal_by_name(r, name, id);
    if (have < 0) {
        rc = have;
    } else if (have && (!id_ok || id_ok(ctx, id))) {
        /* The same device, a new secret: the old one stops working. */
        rc = run_id(r, r->st[ST_INTERNAL_REKEY], id, salt, hash, "internal_device rekey");
    } else {
        /* None yet, or its id belongs to another shard now (the shard
         * count changed under a new data layout): a new device. */
        if (have) rc = run_id(r, r->st[ST_INTERNAL_DELETE], id, NULL, NULL, "internal_device");
        if (!rc) rc = internal_insert(r, name, id_ok, ctx, salt, hash, id);
    }
    /* A new PSK too, sealed under the id now known (or none, without the
     * key: the old one must not outlive the rotation). */
    if (!rc) rc = psk_store(r, id, 1, psk, "internal_device psk");
    if (!rc) rc = exec_st(r, ST_COMMIT, "internal_device commit");
    if (rc) rollback(r);
    /* Our own commit does not move data_version: forget the old hash. */
    cache_clear(r);
    if (!rc) {
        memcpy(id_out, id, sizeof(id));
        memcpy(secret_out, secret, sizeof(secret));
        if (psk_out) memcpy(psk_out, psk, sizeof(psk));
    }
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(secret, sizeof(secret));
    OPENSSL_cleanse(psk, sizeof(psk));
    return rc;
}

/* ---- API tokens ---- */

/* "cyt_" 12 lowercase hex "_" 32 lowercase hex, and nothing else (a NUL
 * inside len is just a wrong character). */
static bool token_well_formed(const char *t, size_t len)
{
    return len == TOKEN_LEN && memcmp(t, TOKEN_PREFIX, TOKEN_PREFIX_LEN) == 0 &&
           is_lower_hex(t + TOKEN_PREFIX_LEN, CY_TOKEN_ID_LEN) &&
           t[TOKEN_PREFIX_LEN + CY_TOKEN_ID_LEN] == '_' &&
           is_lower_hex(t + TOKEN_PREFIX_LEN + CY_TOKEN_ID_LEN + 1, TOKEN_SECRET_LEN);
}

static int copy_token(sqlite3_stmt *st, cy_token *out)
{
    const char *id = (const char *)sqlite3_column_text(st, 0);
    const char *name = (const char *)sqlite3_column_text(st, 1);
    size_t id_len = (size_t)sqlite3_column_bytes(st, 0);
    size_t name_len = (size_t)sqlite3_column_bytes(st, 1);
    int64_t scopes = sqlite3_column_int64(st, 2);
    if (!id || !name || id_len != CY_TOKEN_ID_LEN || name_len > CY_TOKEN_NAME_MAX ||
        !scopes_valid(scopes)) {
        cy_error(NULL, "store: registry: corrupt token row");
        return CY_ESTORE;
    }
    memcpy(out->id, id, id_len + 1);
    memcpy(out->name, name, name_len + 1);
    out->scopes = (unsigned)scopes;
    out->created_at = sqlite3_column_int64(st, 3);
    out->expires_at = sqlite3_column_int64(st, 4);
    out->last_used_at = sqlite3_column_int64(st, 5);
    return 0;
}

/* Run one of the statements without results (BEGIN, COMMIT, ROLLBACK). */
static int exec_st(cy_registry *r, int which, const char *what)
{
    sqlite3_stmt *st = r->st[which];
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : fail(r, WRITES, what);
    done(st);
    return rc;
}

/* Leave a transaction of ours (BEGIN IMMEDIATE), whatever state a failure
 * left it in. */
static void rollback(cy_registry *r)
{
    if (!sqlite3_get_autocommit(r->db)) exec_st(r, ST_ROLLBACK, "token_bootstrap rollback");
}

static int token_any(cy_registry *r, bool *any)
{
    sqlite3_stmt *st = r->st[ST_TOKEN_ANY];
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        *any = sqlite3_column_int(st, 0) != 0;
    else
        rc = fail(r, READS, "token_bootstrap");
    done(st);
    return rc;
}

/* Insert a new token row; arguments already checked. */
static int token_insert(cy_registry *r, const char *name, unsigned scopes, int64_t expires_at,
                        char id_out[CY_TOKEN_ID_LEN + 1], char token_out[CY_TOKEN_MAX + 1])
{
    uint8_t raw[TOKEN_ID_BYTES + TOKEN_SECRET_BYTES + SALT_BYTES], hash[HASH_BYTES];
    char id[CY_TOKEN_ID_LEN + 1], secret[TOKEN_SECRET_LEN + 1];
    const uint8_t *salt = raw + TOKEN_ID_BYTES + TOKEN_SECRET_BYTES;
    cy_registry_end_reads(r); /* the insert commits on its own */
    if (closed(r, WRITES)) return CY_ESTORE;
    sqlite3_stmt *st = r->st[ST_TOKEN_ADD];
    int rc;
    /* 48-bit ids are short enough to read out, and a node holds few tokens;
     * should two ever collide, draw again. */
    for (int attempt = 0;; attempt++) {
        if ((rc = random_bytes(raw, sizeof(raw)))) goto out;
        hex(id, raw, TOKEN_ID_BYTES);
        hex(secret, raw + TOKEN_ID_BYTES, TOKEN_SECRET_BYTES);
        if ((rc = secret_hash(r, salt, (const uint8_t *)secret, TOKEN_SECRET_LEN, hash))) goto out;
        if (sqlite3_bind_text(st, 1, id, CY_TOKEN_ID_LEN, SQLITE_STATIC) ||
            sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC) ||
            sqlite3_bind_int64(st, 3, scopes) ||
            sqlite3_bind_blob(st, 4, salt, SALT_BYTES, SQLITE_STATIC) ||
            sqlite3_bind_blob(st, 5, hash, HASH_BYTES, SQLITE_STATIC) ||
            sqlite3_bind_int64(st, 6, cy_wall_ms()) || sqlite3_bind_int64(st, 7, expires_at)) {
            rc = fail(r, WRITES, "token_create");
            done(st);
            goto out;
        }
        int sr = sqlite3_step(st);
        int ext = sqlite3_extended_errcode(r->db);
        if (sr == SQLITE_DONE) {
            rc = 0;
        } else if (ext == SQLITE_CONSTRAINT_PRIMARYKEY && attempt < 3) {
            done(st);
            continue;
        } else {
            rc = fail(r, WRITES, "token_create");
        }
        done(st);
        break;
    }
    if (!rc) {
        memcpy(id_out, id, sizeof(id));
        memcpy(token_out, TOKEN_PREFIX, TOKEN_PREFIX_LEN);
        memcpy(token_out + TOKEN_PREFIX_LEN, id, CY_TOKEN_ID_LEN);
        token_out[TOKEN_PREFIX_LEN + CY_TOKEN_ID_LEN] = '_';
        memcpy(token_out + TOKEN_PREFIX_LEN + CY_TOKEN_ID_LEN + 1, secret, TOKEN_SECRET_LEN + 1);
    }
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(secret, sizeof(secret));
    return rc;
}

int cy_registry_token_create(cy_registry *r, const char *name, unsigned scopes, int64_t expires_at,
                             char id_out[CY_TOKEN_ID_LEN + 1], char token_out[CY_TOKEN_MAX + 1])
{
    if (!name || !id_out || !token_out) return CY_EINVAL;
    id_out[0] = token_out[0] = '\0';
    /* Internal tokens are made by cy_registry_internal_token only. */
    if (!name_chars_valid(name) || scopes == 0 || (scopes & ~CY_SCOPE_ALL) || expires_at < 0)
        return CY_EINVAL;
    return token_insert(r, name, scopes, expires_at, id_out, token_out);
}

/* ---- last uses ---- */

static void used_clear(cy_registry *r)
{
    map_empty(&r->used);
}

/* Note a use of token id at wall ms now (out of memory: not noted). */
static void used_note(cy_registry *r, const char *id, int64_t now)
{
    token_use *u = cy_map_get(&r->used, id, CY_TOKEN_ID_LEN);
    if (!u) {
        u = cy_calloc(1, sizeof(*u));
        if (!u) return;
        memcpy(u->id, id, CY_TOKEN_ID_LEN);
        if (cy_map_put(&r->used, u->id, CY_TOKEN_ID_LEN, u)) {
            cy_free(u);
            return;
        }
    }
    if (now > u->used) u->used = now;
    if (!r->used_window_ms) r->used_window_ms = now;
}

typedef struct used_walk {
    token_use **v;
    size_t n;
} used_walk;

static void used_collect(void *ctx, void *v)
{
    used_walk *w = ctx;
    w->v[w->n++] = v;
}

int cy_registry_token_flush(cy_registry *r, int64_t now_ms, bool all)
{
    if (!r) return CY_EINVAL;
    if (!r->used.count) return 0;
    /* A look at most every second (a loop calls this far more often), and
     * after a failure not before its retry time. */
    if (!all && (now_ms - r->used_scan_ms < 1000 && now_ms >= r->used_scan_ms)) return 0;
    if (!all && now_ms < r->used_retry_ms) return 0;
    r->used_scan_ms = now_ms;
    used_walk w = {cy_calloc(r->used.count, sizeof(token_use *)), 0};
    if (!w.v) return CY_ENOMEM;
    cy_map_each(&r->used, used_collect, &w);
    /* Due: a token's first use this handle saw (written at once, so a new
     * token shows its use), and once a minute every use not yet written, in
     * one transaction: a busy shard writes once a minute, not once per
     * token per minute (each write makes every other process drop its
     * cache of rows). A clock stepped back counts as a minute passed. Idle
     * long enough: dropped, so the map holds only the tokens in use. */
    int64_t since_window = now_ms - r->used_window_ms;
    bool window = since_window >= CY_TOKEN_USED_WRITE_MS || since_window < 0;
    size_t due = 0;
    for (size_t i = 0; i < w.n; i++) {
        token_use *u = w.v[i];
        int64_t since = now_ms - u->written;
        if (u->used > u->stored && (all || window || u->written == 0)) {
            w.v[due++] = u;
        } else if (u->used <= u->stored && since >= 2 * CY_TOKEN_USED_WRITE_MS) {
            cy_map_del(&r->used, u->id, CY_TOKEN_ID_LEN);
            cy_free(u);
        }
    }
    int rc = 0;
    if (due) {
        cy_registry_end_reads(r); /* BEGIN IMMEDIATE cannot nest */
        rc = closed(r, WRITES) ? CY_ESTORE : exec_st(r, ST_BEGIN, "token_flush begin");
        sqlite3_stmt *st = r->st[ST_TOKEN_USED];
        for (size_t i = 0; i < due && !rc; i++) {
            if (sqlite3_bind_text(st, 1, w.v[i]->id, CY_TOKEN_ID_LEN, SQLITE_STATIC) ||
                sqlite3_bind_int64(st, 2, w.v[i]->used) || sqlite3_step(st) != SQLITE_DONE)
                rc = fail(r, WRITES, "token_flush");
            done(st);
        }
        if (!rc) rc = exec_st(r, ST_COMMIT, "token_flush commit");
        if (rc) {
            rollback(r);
            r->used_retry_ms = now_ms + 10000;
        } else {
            for (size_t i = 0; i < due; i++) {
                w.v[i]->stored = w.v[i]->used;
                w.v[i]->written = now_ms;
            }
            if (window || all) r->used_window_ms = now_ms;
            rc = (int)due;
        }
    }
    cy_free(w.v);
    return rc;
}

/* What this handle knows of id's last use beyond the file: 0 if nothing. */
static int64_t used_get(cy_registry *r, const char *id)
{
    token_use *u = cy_map_get(&r->used, id, strnlen(id, CY_TOKEN_ID_LEN + 1));
    return u ? u->used : 0;
}

int cy_registry_token_check(cy_registry *r, const char *token, size_t len, int64_t now_ms,
                            cy_token_auth *out)
{
    if (out) memset(out, 0, sizeof(*out));
    if (!out || (!token && len)) return CY_EINVAL;
    if (!token_well_formed(token, len)) return CY_EINVAL;
    const char *id = token + TOKEN_PREFIX_LEN;
    const uint8_t *secret = (const uint8_t *)id + CY_TOKEN_ID_LEN + 1;
    cached row;
    memset(&row, 0, sizeof(row));
    int rc = check_secret(r, r->st[ST_TOKEN_CHECK], true, id, CY_TOKEN_ID_LEN, secret,
                          TOKEN_SECRET_LEN, "token_check", &row);
    /* Both failures are one answer: a caller learns nothing about which ids exist. */
    if (rc == CY_ENOENT) rc = CY_EACCES;
    if (rc) return rc;
    memcpy(out->id, id, CY_TOKEN_ID_LEN);
    out->id[CY_TOKEN_ID_LEN] = '\0';
    out->expires_at = row.expires_at;
    /* Expiry is said only to who holds the secret. */
    if (row.expires_at && now_ms >= row.expires_at) return CY_ETIMEDOUT;
    out->scopes = row.scope;
    used_note(r, out->id, now_ms);
    return 0;
}

int cy_registry_token_auth(cy_registry *r, const char *id, int64_t now_ms, cy_token_auth *out)
{
    if (out) memset(out, 0, sizeof(*out));
    if (!r || !id || !out) return CY_EINVAL;
    size_t len = strnlen(id, CY_TOKEN_ID_LEN + 1);
    if (len != CY_TOKEN_ID_LEN || !is_lower_hex(id, len)) return CY_ENOENT;
    cached row;
    int rc = row_get(r, r->st[ST_TOKEN_CHECK], 't', id, len, "token_auth", &row);
    if (rc < 0) return rc;
    if (rc == 0) return CY_ENOENT;
    memcpy(out->id, id, len + 1);
    out->expires_at = row.expires_at;
    if (row.expires_at && now_ms >= row.expires_at) return CY_ETIMEDOUT;
    out->scopes = row.scope;
    used_note(r, out->id, now_ms);
    return 0;
}

int cy_registry_token_list(cy_registry *r, int (*fn)(void *ctx, const cy_token *t), void *ctx)
{
    if (!fn) return CY_EINVAL;
    cy_registry_end_reads(r);
    sqlite3_stmt *st = r->st[ST_TOKEN_LIST];
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        cy_token t;
        if (!(rc = copy_token(st, &t))) {
            int64_t mine = used_get(r, t.id);
            if (mine > t.last_used_at) t.last_used_at = mine;
            rc = fn(ctx, &t);
        }
    }
    if (rc == 0 && sr != SQLITE_DONE) rc = fail(r, READS, "token_list");
    done(st);
    return rc;
}

int cy_registry_token_exists(cy_registry *r, const char *id)
{
    if (!id) return CY_EINVAL;
    cache_recheck(r);
    if (cache_get(r, 't', id, strnlen(id, CY_DEVICE_ID_LEN + 1))) return 1;
    cy_registry_end_reads(r);
    if (closed(r, READS)) return CY_ESTORE;
    sqlite3_stmt *st = r->st[ST_TOKEN_CHECK];
    int rc;
    if (sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC)) {
        rc = fail(r, READS, "token_exists");
    } else {
        int sr = sqlite3_step(st);
        rc = sr == SQLITE_ROW ? 1 : sr == SQLITE_DONE ? 0 : fail(r, READS, "token_exists");
    }
    done(st);
    return rc;
}

int cy_registry_token_revoke(cy_registry *r, const char *id)
{
    return delete_by_key(r, r->st[ST_TOKEN_REVOKE], id, "token_revoke");
}

int cy_registry_internal_token(cy_registry *r, const char *name, char id_out[CY_TOKEN_ID_LEN + 1],
                               char token_out[CY_TOKEN_MAX + 1])
{
    if (!r || !name || !id_out || !token_out) return CY_EINVAL;
    id_out[0] = token_out[0] = '\0';
    if (!internal_name_valid(name)) return CY_EINVAL;
    cy_registry_end_reads(r); /* BEGIN IMMEDIATE cannot nest */
    if (closed(r, WRITES)) return CY_ESTORE;
    int rc = exec_st(r, ST_BEGIN, "internal_token begin");
    if (rc) return rc;
    /* A new id, not a new secret under the old one: a shard that cached the
     * old row (for up to RECHECK_MS) knows nothing of the new id and reads
     * it from the file. */
    sqlite3_stmt *st = r->st[ST_TOKEN_DROP_INTERNAL];
    if (sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC) || sqlite3_step(st) != SQLITE_DONE)
        rc = fail(r, WRITES, "internal_token");
    done(st);
    if (!rc) rc = token_insert(r, name, CY_SCOPE_INTERNAL, 0, id_out, token_out);
    if (!rc) rc = exec_st(r, ST_COMMIT, "internal_token commit");
    if (rc) {
        rollback(r);
        OPENSSL_cleanse(token_out, CY_TOKEN_MAX + 1);
        id_out[0] = token_out[0] = '\0';
    }
    cache_clear(r);
    return rc;
}

/* fsync the directory dir, so a rename in it survives a power cut. A file
 * system that cannot sync directories (EINVAL) is let be. */
static int sync_dir(const char *dir)
{
    int rc = 0, fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    if (fsync(fd) && errno != EINVAL) rc = -errno;
    close(fd);
    return rc;
}

/* Write text to path as a new file readable by its owner only. The text goes
 * to a fresh temporary file beside path (mkstemp: O_CREAT | O_EXCL, so no
 * existing file is ever opened or followed), is synced, and is then renamed
 * over path: readers see no file or the whole file, and a stale file or
 * symlink at path is replaced in one step. On failure nothing new is left
 * at path. */
static int write_private_file(const char *path, const char *text)
{
    char *tmp;
    int rc = private_tmp(path, text, strlen(text), &tmp);
    if (rc) return rc;
    if (rename(tmp, path)) {
        rc = -errno;
        unlink(tmp);
        cy_free(tmp);
        return rc;
    }
    dir_of(tmp); /* tmp is free now */
    if ((rc = sync_dir(tmp))) unlink(path);
    cy_free(tmp);
    return rc;
}

int cy_registry_token_bootstrap(cy_registry *r, const char *path, bool *created)
{
    if (created) *created = false;
    if (!path || !*path || !created) return CY_EINVAL;
    cy_registry_end_reads(r); /* BEGIN IMMEDIATE cannot nest */
    /* The usual case, tokens exist, costs one read and takes no write lock. */
    bool any = false;
    int rc = token_any(r, &any);
    if (rc || any) return rc;

    if ((rc = exec_st(r, ST_BEGIN, "token_bootstrap begin"))) return rc;
    char id[CY_TOKEN_ID_LEN + 1], token[CY_TOKEN_MAX + 2];
    /* Again under the write lock: another process may have just done it. */
    if ((rc = token_any(r, &any)) || any) goto fail;
    if ((rc = token_insert(r, "admin", CY_SCOPE_ALL, 0, id, token))) goto fail;
    /* The file is written before the row commits, so a failure never leaves
     * a token that nobody has; a file whose row did not commit is removed
     * (and would be replaced by the next bootstrap anyway). */
    size_t n = strlen(token);
    token[n] = '\n';
    token[n + 1] = '\0';
    if ((rc = write_private_file(path, token))) goto fail;
    if ((rc = exec_st(r, ST_COMMIT, "token_bootstrap commit"))) {
        unlink(path); /* best effort: do not leave a dead token to be tried */
        goto fail;
    }
    *created = true;
    OPENSSL_cleanse(token, sizeof(token));
    return 0;
fail:
    rollback(r);
    OPENSSL_cleanse(token, sizeof(token));
    return rc;
}

/* ---- for hooks.c (registry_int.h) ---- */

sqlite3_stmt *cy_registry_hook_st(cy_registry *r, int which)
{
    return r->hook_st[which];
}

sqlite3 *cy_registry_db(cy_registry *r)
{
    return r->db;
}

int cy_registry_ready(cy_registry *r, bool write)
{
    cy_registry_end_reads(r);
    return closed(r, write ? WRITES : READS);
}

int cy_registry_fail(cy_registry *r, bool write, const char *what)
{
    return fail(r, write ? WRITES : READS, what);
}

int cy_registry_begin(cy_registry *r, const char *what)
{
    int rc = cy_registry_ready(r, true);
    return rc ? rc : exec_st(r, ST_BEGIN, what);
}

int cy_registry_commit(cy_registry *r, const char *what)
{
    return exec_st(r, ST_COMMIT, what);
}

void cy_registry_rollback(cy_registry *r)
{
    rollback(r);
}
