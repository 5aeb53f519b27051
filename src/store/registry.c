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
 * the busy timeout absorbs the short write locks.
 *
 * A check costs a read transaction, and in WAL mode starting and ending one
 * is most of the work: two POSIX lock calls and an fstat. An owner that
 * checks in bursts (a shard, one loop pass of CONNECTs) turns on
 * cy_registry_share_reads: checks then share one read transaction, begun
 * by the first and ended by cy_registry_end_reads, which the owner calls
 * before its loop waits. Between two such calls every check sees one
 * snapshot; a device added or removed by another process is seen from the
 * next. The other calls end a shared transaction first, so their writes
 * commit at once. (An in-memory cache of device rows would save no more:
 * telling whether it is still valid, PRAGMA data_version, costs the same
 * read transaction, and it would hold memory per device.)
 *
 * The HMAC runs on a context made once at open (OpenSSL's one-shot HMAC()
 * fetches the algorithm again on every call: 3x slower); making it loads
 * OpenSSL's provider at start rather than at the first CONNECT. The registry always runs
 * with synchronous=FULL: additions are rare, and a device whose secret was
 * shown must not be forgotten by a power cut.
 *
 * Every SQLite failure is logged once, where it is detected, and returned
 * as CY_ESTORE.
 */
#include "store/store.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include "store/db.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_VERSION 1
#define ID_BYTES (CY_DEVICE_ID_LEN / 2)         /* 12 */
#define SECRET_BYTES (CY_DEVICE_SECRET_LEN / 2) /* 16 */
#define SALT_BYTES 16
#define HASH_BYTES 32 /* SHA-256 */

static const char schema_v1[] = "CREATE TABLE IF NOT EXISTS devices("
                                " id TEXT PRIMARY KEY NOT NULL,"
                                " name TEXT NOT NULL UNIQUE,"
                                " salt BLOB NOT NULL,"
                                " hash BLOB NOT NULL,"
                                " created_at INTEGER NOT NULL);"
                                "PRAGMA user_version = 1;";

enum { ST_ADD, ST_CHECK, ST_GET, ST_REMOVE, ST_LIST, ST_BEGIN, ST_END, N_ST };

/* A row found by id or name: an exact id match wins over a name match. */
#define BY_ID_OR_NAME "WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"

static const char *const sql[N_ST] = {
    [ST_ADD] = "INSERT INTO devices(id, name, salt, hash, created_at) VALUES(?1, ?2, ?3, ?4, ?5)",
    [ST_CHECK] = "SELECT salt, hash FROM devices WHERE id = ?1",
    [ST_GET] = "SELECT id, name, created_at FROM devices " BY_ID_OR_NAME,
    [ST_REMOVE] = "DELETE FROM devices WHERE rowid = (SELECT rowid FROM devices " BY_ID_OR_NAME ")",
    /* rowids grow with insertion, so rowid order is creation order. */
    [ST_LIST] = "SELECT id, name, created_at FROM devices ORDER BY rowid",
    [ST_BEGIN] = "BEGIN", /* deferred: the read lock comes with the first SELECT */
    [ST_END] = "COMMIT",
};

struct cy_registry {
    sqlite3 *db;
    sqlite3_stmt *st[N_ST];
    EVP_MAC_CTX *mac; /* HMAC-SHA256, rekeyed with each device's salt */
    bool share_reads; /* checks share a read transaction until end_reads */
    bool reading;     /* that transaction is open */
};

static int db_fail(sqlite3 *db, const char *what)
{
    return cy_db_fail(db, "registry", what);
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

/* ---- open / close ---- */

int cy_registry_open(const char *path, cy_registry **out)
{
    if (!path || !out) return CY_EINVAL;
    *out = NULL;
    cy_registry *r = cy_calloc(1, sizeof(*r));
    if (!r) return CY_ENOMEM;
    static const cy_db_schema schema = {"registry", SCHEMA_VERSION, schema_v1, NULL};
    int rc = cy_db_open(path, true, &schema, sql, N_ST, &r->db, r->st);
    if (rc) goto fail;
    rc = mac_open(r);
    if (rc) goto fail;
    *out = r;
    return 0;
fail:
    cy_registry_close(r);
    return rc;
}

void cy_registry_close(cy_registry *r)
{
    if (!r) return;
    cy_registry_end_reads(r);
    EVP_MAC_CTX_free(r->mac);
    for (int i = 0; i < N_ST; i++)
        sqlite3_finalize(r->st[i]);
    if (r->db && sqlite3_close(r->db) != SQLITE_OK) db_fail(r->db, "close");
    cy_free(r);
}

void cy_registry_share_reads(cy_registry *r, bool on)
{
    if (!r) return;
    if (!on) cy_registry_end_reads(r);
    r->share_reads = on;
}

void cy_registry_end_reads(cy_registry *r)
{
    if (!r || !r->reading) return;
    r->reading = false;
    /* COMMIT of a read-only transaction only drops the read lock; should it
     * fail, sqlite3_reset leaves autocommit on all the same. */
    if (sqlite3_step(r->st[ST_END]) != SQLITE_DONE) db_fail(r->db, "end of shared read");
    sqlite3_reset(r->st[ST_END]);
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

static bool name_valid(const char *name)
{
    size_t n = strnlen(name, CY_DEVICE_NAME_MAX + 1);
    if (n == 0 || n > CY_DEVICE_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++)
        if (!name_char(name[i])) return false;
    return !(n == CY_DEVICE_ID_LEN && is_lower_hex(name, n));
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
    return 0;
}

/* ---- devices ---- */

int cy_registry_device_add(cy_registry *r, const char *name, char id_out[CY_DEVICE_ID_LEN + 1],
                           char secret_out[CY_DEVICE_SECRET_LEN + 1])
{
    if (!name || !id_out || !secret_out) return CY_EINVAL;
    cy_registry_end_reads(r); /* the insert commits on its own */
    id_out[0] = secret_out[0] = '\0';
    if (!name_valid(name)) return CY_EINVAL;

    uint8_t raw[ID_BYTES + SECRET_BYTES + SALT_BYTES], hash[HASH_BYTES];
    char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1];
    const uint8_t *salt = raw + ID_BYTES + SECRET_BYTES;
    sqlite3_stmt *st = r->st[ST_ADD];
    int rc;
    /* 96-bit ids do not collide in practice; if one ever does, draw again. */
    for (int attempt = 0;; attempt++) {
        if ((rc = random_bytes(raw, sizeof(raw)))) goto out;
        hex(id, raw, ID_BYTES);
        hex(secret, raw + ID_BYTES, SECRET_BYTES);
        if ((rc = secret_hash(r, salt, (const uint8_t *)secret, CY_DEVICE_SECRET_LEN, hash)))
            goto out;
        if (sqlite3_bind_text(st, 1, id, CY_DEVICE_ID_LEN, SQLITE_STATIC) ||
            sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC) ||
            sqlite3_bind_blob(st, 3, salt, SALT_BYTES, SQLITE_STATIC) ||
            sqlite3_bind_blob(st, 4, hash, HASH_BYTES, SQLITE_STATIC) ||
            sqlite3_bind_int64(st, 5, cy_wall_ms())) {
            rc = db_fail(r->db, "device_add");
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
            rc = db_fail(r->db, "device_add");
        }
        done(st);
        break;
    }
    if (!rc) {
        memcpy(id_out, id, sizeof(id));
        memcpy(secret_out, secret, sizeof(secret));
    }
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(secret, sizeof(secret));
    return rc;
}

int cy_registry_device_check(cy_registry *r, const char *id, size_t id_len, const uint8_t *secret,
                             size_t secret_len)
{
    /* Used when the id is unknown, so that case costs one HMAC too. */
    static const uint8_t dummy_salt[SALT_BYTES];
    static const uint8_t dummy_hash[HASH_BYTES];
    if ((!id && id_len) || (!secret && secret_len)) return CY_EINVAL;

    sqlite3_stmt *st = r->st[ST_CHECK];
    const uint8_t *salt = dummy_salt, *want = dummy_hash;
    bool found = false;
    int rc = 0;
    /* Only a well-formed id can exist: the others skip the lookup. */
    if (id_len == CY_DEVICE_ID_LEN) {
        if (r->share_reads && !r->reading) {
            /* A failed BEGIN leaves autocommit: this check reads on its own. */
            r->reading = sqlite3_step(r->st[ST_BEGIN]) == SQLITE_DONE;
            sqlite3_reset(r->st[ST_BEGIN]);
        }
        if (sqlite3_bind_text(st, 1, id, (int)id_len, SQLITE_STATIC)) {
            rc = db_fail(r->db, "device_check");
            goto out;
        }
        int sr = sqlite3_step(st);
        if (sr == SQLITE_ROW) {
            if (sqlite3_column_bytes(st, 0) != SALT_BYTES ||
                sqlite3_column_bytes(st, 1) != HASH_BYTES) {
                cy_error(NULL, "store: registry: corrupt device row %.*s", (int)id_len, id);
                rc = CY_ESTORE;
                goto out;
            }
            salt = sqlite3_column_blob(st, 0);
            want = sqlite3_column_blob(st, 1);
            found = true;
        } else if (sr != SQLITE_DONE) {
            rc = db_fail(r->db, "device_check");
            goto out;
        }
    }
    uint8_t got[HASH_BYTES];
    if ((rc = secret_hash(r, salt, secret, secret_len, got))) goto out;
    bool same = CRYPTO_memcmp(got, want, HASH_BYTES) == 0;
    rc = !found ? CY_ENOENT : same ? 0 : CY_EACCES;
out:
    done(st);
    return rc;
}

int cy_registry_device_get(cy_registry *r, const char *id_or_name, cy_device *out)
{
    if (!id_or_name || !out) return CY_EINVAL;
    cy_registry_end_reads(r);
    sqlite3_stmt *st = r->st[ST_GET];
    int rc;
    if (sqlite3_bind_text(st, 1, id_or_name, -1, SQLITE_STATIC)) {
        rc = db_fail(r->db, "device_get");
    } else {
        int sr = sqlite3_step(st);
        rc = sr == SQLITE_ROW    ? copy_device(st, out)
             : sr == SQLITE_DONE ? CY_ENOENT
                                 : db_fail(r->db, "device_get");
    }
    done(st);
    return rc;
}

int cy_registry_device_remove(cy_registry *r, const char *id_or_name)
{
    if (!id_or_name) return CY_EINVAL;
    cy_registry_end_reads(r); /* the delete commits on its own */
    sqlite3_stmt *st = r->st[ST_REMOVE];
    int rc;
    if (sqlite3_bind_text(st, 1, id_or_name, -1, SQLITE_STATIC))
        rc = db_fail(r->db, "device_remove");
    else if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(r->db, "device_remove");
    else
        rc = sqlite3_changes(r->db) ? 0 : CY_ENOENT;
    done(st);
    return rc;
}

int cy_registry_device_list(cy_registry *r, int (*fn)(void *ctx, const cy_device *d), void *ctx)
{
    if (!fn) return CY_EINVAL;
    cy_registry_end_reads(r);
    sqlite3_stmt *st = r->st[ST_LIST];
    int rc = 0, sr = SQLITE_DONE;
    while (rc == 0 && (sr = sqlite3_step(st)) == SQLITE_ROW) {
        cy_device d;
        if (!(rc = copy_device(st, &d))) rc = fn(ctx, &d);
    }
    if (rc == 0 && sr != SQLITE_DONE) rc = db_fail(r->db, "device_list");
    done(st);
    return rc;
}
