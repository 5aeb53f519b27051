/* hooks: webhook definitions in the registry (store/hooks.h), on the
 * tables of schema version 4 (registry.c) through the registry handle
 * (registry_int.h).
 *
 * Every change runs in one BEGIN IMMEDIATE transaction with the bump of the
 * generation counter (meta 'webhooks_gen'), and bumps it only if a row
 * changed: a failed or empty change (a bad field, the limit, an unknown id,
 * enabling what is enabled, a replay already asked) leaves the generation
 * where it was, so shards reread the definitions exactly when they moved.
 * The limit (max) is counted inside that transaction, so two shards adding
 * at once cannot pass it together. Taking replay requests deletes them but
 * does not bump the generation: no definition changed, and every other
 * shard would reload for nothing.
 *
 * Fields are checked for shape here, whoever calls (the API, a CLI, the
 * engine disabling a webhook on 410): lengths, the method, the body kind,
 * JSON shapes, the device id. JSON is checked by SQLite's own JSON
 * functions, so the store needs no JSON library. Templates and URLs are
 * the caller's to check (webhooks/render.h, policy.h): the store is below
 * them (scripts/layers.py).
 *
 * Secrets are made here in the format of cy_wh_secret_new
 * (webhooks/sign.c): "whsec_" + base64 of CY_WH_SECRET_BYTES (24) random
 * bytes. That code is layer 3 and the store layer 1, so the few lines are
 * duplicated rather than included: a change of format there must be made
 * here too (test_store_hooks checks the format). Ids are "wh_" + 16 random
 * lowercase hex characters.
 */
#include "store/hooks.h"
#include "store/registry_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

/* Keep in step with webhooks/sign.h (CY_WH_SECRET_BYTES, CY_WH_SECRET_LEN):
 * 24 bytes are 32 base64 characters, "whsec_" + 32 + NUL = 39 <= 64. */
#define SECRET_BYTES 24
#define SECRET_PREFIX "whsec_"
_Static_assert(6 + 4 * ((SECRET_BYTES + 2) / 3) + 1 <= CY_WEBHOOK_SECRET_LEN,
               "a secret fits its buffer");
#define ID_PREFIX "wh_"
#define ID_BYTES 8 /* 16 hex */
_Static_assert(3 + 2 * ID_BYTES == CY_WEBHOOK_ID_LEN, "id length");

/* Shape limits (bytes). Templates: CY_WH_TEMPLATE_MAX of webhooks/render.h
 * (the renderer refuses longer ones anyway). Headers: their JSON object as
 * a whole. */
#define TEMPLATE_MAX 16384
#define HEADERS_MAX 16384
#define REASON_MAX (sizeof(((cy_webhook *)0)->disabled_reason) - 1)
enum { KIND_DEFAULT, KIND_JSON, KIND_FORM, KIND_TEXT }; /* cy_wh_body_kind */

#define COLS                                                                                       \
    "id, event, url, method, headers, body_kind, body, device_id, response_topic, error_topic,"    \
    " enabled, ordered, disabled_reason, secret, old_secret, old_secret_until, created_at,"        \
    " updated_at"

const char *const cy_registry_hooks_sql[CY_RH_N] = {
    [CY_RH_COUNT] = "SELECT count(*) FROM webhooks",
    [CY_RH_INSERT] = "INSERT INTO webhooks(" COLS ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,"
                     " ?10, ?11, ?12, ?13, ?14, '', 0, ?15, ?15)",
    [CY_RH_GET] = "SELECT " COLS " FROM webhooks WHERE id = ?1",
    /* One row at a time, in rowid (creation) order: no statement is open
     * while the list's callback runs. */
    [CY_RH_NEXT] = "SELECT " COLS ", rowid FROM webhooks WHERE rowid > ?1 ORDER BY rowid LIMIT 1",
    [CY_RH_UPDATE] = "UPDATE webhooks SET event = ?2, url = ?3, method = ?4, headers = ?5,"
                     " body_kind = ?6, body = ?7, device_id = ?8, response_topic = ?9,"
                     " error_topic = ?10, enabled = ?11, ordered = ?12, disabled_reason = ?13,"
                     " updated_at = ?14 WHERE id = ?1",
    [CY_RH_DELETE] = "DELETE FROM webhooks WHERE id = ?1",
    [CY_RH_DELETE_REPLAYS] = "DELETE FROM webhook_replays WHERE webhook = ?1",
    /* Changes nothing (and so bumps nothing) when the state is already so. */
    [CY_RH_ENABLE] = "UPDATE webhooks SET enabled = ?2, disabled_reason = ?3, updated_at = ?4"
                     " WHERE id = ?1 AND (enabled != ?2 OR disabled_reason != ?3)",
    [CY_RH_EXISTS] = "SELECT 1 FROM webhooks WHERE id = ?1",
    [CY_RH_ROTATE] = "UPDATE webhooks SET old_secret = secret, old_secret_until = ?3,"
                     " secret = ?2, updated_at = ?4 WHERE id = ?1",
    [CY_RH_GEN] = "SELECT value FROM meta WHERE name = 'webhooks_gen'",
    [CY_RH_BUMP] = "UPDATE meta SET value = value + 1 WHERE name = 'webhooks_gen'",
    [CY_RH_REPLAY] =
        "INSERT OR IGNORE INTO webhook_replays(shard, webhook, seq) VALUES(?2, ?1, ?3)",
    [CY_RH_REPLAYS] = "SELECT rowid, webhook, seq FROM webhook_replays WHERE shard = ?1"
                      " ORDER BY rowid",
    [CY_RH_REPLAY_DONE] = "DELETE FROM webhook_replays WHERE rowid = ?1",
    /* (the JSON type of ?1 or NULL if it is not JSON, and for an object the
     * number of its members that are not strings). */
    [CY_RH_JSON_SHAPE] = "SELECT CASE WHEN json_valid(?1) THEN json_type(?1) END,"
                         " CASE WHEN json_valid(?1) AND json_type(?1) = 'object' THEN"
                         " (SELECT count(*) FROM json_each(?1) WHERE type != 'text') END",
};

/* ---- small helpers ---- */

static void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

static void why_set(char *why, size_t why_len, const char *fmt, const char *field)
{
    if (why && why_len) snprintf(why, why_len, fmt, field);
}

static int random_bytes(uint8_t *p, size_t n)
{
    if (RAND_bytes(p, (int)n) == 1) return 0;
    cy_error(NULL, "store: webhooks: RAND_bytes failed");
    return CY_EIO;
}

static void new_id(char out[CY_WEBHOOK_ID_LEN + 1], const uint8_t raw[ID_BYTES])
{
    static const char digits[] = "0123456789abcdef";
    memcpy(out, ID_PREFIX, 3);
    for (size_t i = 0; i < ID_BYTES; i++) {
        out[3 + 2 * i] = digits[raw[i] >> 4];
        out[3 + 2 * i + 1] = digits[raw[i] & 15];
    }
    out[CY_WEBHOOK_ID_LEN] = '\0';
}

/* The same format as cy_wh_secret_new (webhooks/sign.c); see the top. */
static int new_secret(char out[CY_WEBHOOK_SECRET_LEN])
{
    uint8_t raw[SECRET_BYTES];
    int rc = random_bytes(raw, sizeof(raw));
    if (rc) return rc;
    memcpy(out, SECRET_PREFIX, 6);
    EVP_EncodeBlock((unsigned char *)out + 6, raw, SECRET_BYTES); /* NUL-terminates */
    OPENSSL_cleanse(raw, sizeof(raw));
    return 0;
}

static bool lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

/* "wh_" + 16 lowercase hex: only such an id can exist. */
static bool id_valid(const char *id)
{
    return id && strnlen(id, CY_WEBHOOK_ID_LEN + 1) == CY_WEBHOOK_ID_LEN &&
           memcmp(id, ID_PREFIX, 3) == 0 && lower_hex(id + 3, 2 * ID_BYTES);
}

/* JSON shape of text with SQLite: 1 an object of strings (want_object) or
 * any JSON (!want_object), 0 not so, or CY_ESTORE. */
static int json_shape(cy_registry *r, const char *text, bool want_object)
{
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_JSON_SHAPE);
    int rc;
    if (sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC) || sqlite3_step(st) != SQLITE_ROW) {
        rc = cy_registry_fail(r, false, "webhook json check");
    } else if (sqlite3_column_type(st, 0) == SQLITE_NULL) {
        rc = 0;
    } else if (!want_object) {
        rc = 1;
    } else {
        const char *type = (const char *)sqlite3_column_text(st, 0);
        rc = type && !strcmp(type, "object") && sqlite3_column_int64(st, 1) == 0;
    }
    done(st);
    return rc;
}

static bool has_wildcard(const char *s)
{
    return strchr(s, '+') || strchr(s, '#');
}

/* Check every field of w but id, secrets and times. 0, CY_EINVAL with the
 * field named in why, or CY_ESTORE. */
static int check_fields(cy_registry *r, const cy_webhook *w, char *why, size_t why_len)
{
    const char *bad = NULL, *fmt = "%s";
    const char *event = w->event ? w->event : "";
    size_t url_len = w->url ? strnlen(w->url, CY_WEBHOOK_URL_MAX + 1) : 0;
    static const char *const methods[] = {"POST", "PUT", "PATCH", "GET", "DELETE"};
    bool method_ok = false;
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        method_ok = method_ok || !strcmp(w->method, methods[i]);
    size_t dev_len = strnlen(w->device_id, sizeof(w->device_id));
    const char *topics[2] = {w->response_topic, w->error_topic};
    const char *topic_names[2] = {"response_topic", "error_topic"};

    if (strnlen(event, CY_WEBHOOK_EVENT_MAX + 1) > CY_WEBHOOK_EVENT_MAX) {
        bad = "event";
        fmt = "%s is at most 256 bytes";
    } else if (has_wildcard(event)) {
        bad = "event";
        fmt = "%s is a name prefix: no '+' or '#'";
    } else if (url_len == 0 || url_len > CY_WEBHOOK_URL_MAX) {
        bad = "url";
        fmt = "%s is 1 to 2048 bytes";
    } else if (!method_ok) {
        bad = "method";
        fmt = "%s is POST, PUT, PATCH, GET or DELETE";
    } else if (w->headers && strnlen(w->headers, HEADERS_MAX + 1) > HEADERS_MAX) {
        bad = "headers";
        fmt = "%s are at most 16384 bytes of JSON";
    } else if (w->body_kind < KIND_DEFAULT || w->body_kind > KIND_TEXT) {
        bad = "body_kind";
        fmt = "%s is not a body kind";
    } else if ((w->body_kind == KIND_DEFAULT) != (w->body == NULL)) {
        bad = "body";
        fmt = w->body ? "%s: the default body has no template" : "%s: no template";
    } else if (w->body && strnlen(w->body, TEMPLATE_MAX + 1) > TEMPLATE_MAX) {
        bad = "body";
        fmt = "%s is at most 16384 bytes";
    } else if (dev_len != 0 &&
               (dev_len != CY_DEVICE_ID_LEN || !lower_hex(w->device_id, CY_DEVICE_ID_LEN))) {
        bad = "device_id";
        fmt = "%s is a device id (24 lowercase hex characters)";
    } else if (strnlen(w->disabled_reason, sizeof(w->disabled_reason)) > REASON_MAX) {
        bad = "disabled_reason";
        fmt = "%s is at most 127 bytes";
    }
    for (int i = 0; !bad && i < 2; i++) {
        if (!topics[i]) continue;
        size_t n = strnlen(topics[i], CY_WEBHOOK_TOPIC_MAX + 1);
        if (n == 0 || n > CY_WEBHOOK_TOPIC_MAX) {
            bad = topic_names[i];
            fmt = "%s is 1 to 256 bytes";
        } else if (has_wildcard(topics[i]) || topics[i][0] == '$') {
            bad = topic_names[i];
            fmt = "%s is a topic name: no '+' or '#', not a '$' topic";
        }
    }
    if (bad) {
        why_set(why, why_len, fmt, bad);
        return CY_EINVAL;
    }
    /* JSON shapes last: they cost a statement each. */
    int ok = 1;
    if (w->headers && (ok = json_shape(r, w->headers, true)) == 0) {
        bad = "headers";
        fmt = "%s must be a JSON object of strings";
    } else if (ok >= 0 && w->body_kind == KIND_FORM && (ok = json_shape(r, w->body, true)) == 0) {
        bad = "form";
        fmt = "%s must be a JSON object of strings";
    } else if (ok >= 0 && w->body_kind == KIND_JSON && (ok = json_shape(r, w->body, false)) == 0) {
        bad = "json";
        fmt = "%s must be JSON";
    }
    if (ok < 0) return ok;
    if (bad) {
        why_set(why, why_len, fmt, bad);
        return CY_EINVAL;
    }
    return 0;
}

/* Bind text that may be NULL (SQL NULL). */
static int bind_opt(sqlite3_stmt *st, int i, const char *s)
{
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* Bind the fields shared by insert and update: ?2..?13. */
static int bind_fields(sqlite3_stmt *st, const cy_webhook *w)
{
    const char *reason = w->enabled ? "" : w->disabled_reason;
    return sqlite3_bind_text(st, 2, w->event ? w->event : "", -1, SQLITE_STATIC) ||
           sqlite3_bind_text(st, 3, w->url, -1, SQLITE_STATIC) ||
           sqlite3_bind_text(st, 4, w->method, -1, SQLITE_STATIC) || bind_opt(st, 5, w->headers) ||
           sqlite3_bind_int(st, 6, w->body_kind) || bind_opt(st, 7, w->body) ||
           sqlite3_bind_text(st, 8, w->device_id, -1, SQLITE_STATIC) ||
           bind_opt(st, 9, w->response_topic) || bind_opt(st, 10, w->error_topic) ||
           sqlite3_bind_int(st, 11, w->enabled) || sqlite3_bind_int(st, 12, w->ordered) ||
           sqlite3_bind_text(st, 13, reason, -1, SQLITE_STATIC);
}

/* Run st (bound) to its end: its changes (>= 0) or CY_ESTORE. Resets st. */
static int run(cy_registry *r, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? sqlite3_changes(cy_registry_db(r))
                                             : cy_registry_fail(r, true, what);
    done(st);
    return rc;
}

/* Run st bound with id alone. */
static int run_id(cy_registry *r, int which, const char *id, const char *what)
{
    sqlite3_stmt *st = cy_registry_hook_st(r, which);
    if (sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC)) {
        done(st);
        return cy_registry_fail(r, true, what);
    }
    return run(r, st, what);
}

/* In a transaction: bump the generation. */
static int bump(cy_registry *r)
{
    int rc = run(r, cy_registry_hook_st(r, CY_RH_BUMP), "webhooks generation");
    return rc < 0 ? rc : rc == 1 ? 0 : CY_ESTORE; /* the meta row is made with the schema */
}

/* End a transaction begun by the caller: commit with a bump when changed
 * (> 0), commit alone when not (0), roll back on an error (< 0). Returns 0
 * or the error. */
static int finish(cy_registry *r, int changed, const char *what)
{
    int rc = changed < 0 ? changed : 0;
    if (!rc && changed > 0) rc = bump(r);
    if (!rc) rc = cy_registry_commit(r, what);
    if (rc) cy_registry_rollback(r);
    return rc;
}

static char *dup_col(sqlite3_stmt *st, int col, bool *oom)
{
    if (sqlite3_column_type(st, col) == SQLITE_NULL) return NULL;
    const char *t = (const char *)sqlite3_column_text(st, col);
    char *s = t ? cy_strdup(t) : NULL;
    if (!s) *oom = true;
    return s;
}

/* Copy a fixed-size text column; false if it does not fit. */
static bool copy_col(sqlite3_stmt *st, int col, char *out, size_t size)
{
    const char *t = (const char *)sqlite3_column_text(st, col);
    size_t n = t ? (size_t)sqlite3_column_bytes(st, col) : 0;
    if (n >= size) return false;
    memcpy(out, t ? t : "", n);
    out[n] = '\0';
    return true;
}

/* The row at st (COLS) into *out, strings copied (cy_webhook_fini). */
static int copy_row(sqlite3_stmt *st, cy_webhook *out)
{
    memset(out, 0, sizeof(*out));
    bool oom = false;
    bool fits = copy_col(st, 0, out->id, sizeof(out->id)) &&
                copy_col(st, 3, out->method, sizeof(out->method)) &&
                copy_col(st, 7, out->device_id, sizeof(out->device_id)) &&
                copy_col(st, 12, out->disabled_reason, sizeof(out->disabled_reason)) &&
                copy_col(st, 13, out->secret, sizeof(out->secret)) &&
                copy_col(st, 14, out->old_secret, sizeof(out->old_secret));
    out->event = dup_col(st, 1, &oom);
    out->url = dup_col(st, 2, &oom);
    out->headers = dup_col(st, 4, &oom);
    out->body_kind = sqlite3_column_int(st, 5);
    out->body = dup_col(st, 6, &oom);
    out->response_topic = dup_col(st, 8, &oom);
    out->error_topic = dup_col(st, 9, &oom);
    out->enabled = sqlite3_column_int(st, 10) != 0;
    out->ordered = sqlite3_column_int(st, 11) != 0;
    out->old_secret_until = sqlite3_column_int64(st, 15);
    out->created_at = sqlite3_column_int64(st, 16);
    out->updated_at = sqlite3_column_int64(st, 17);
    if (!oom && (!fits || !out->event || !out->url)) {
        cy_error(NULL, "store: registry: corrupt webhook row %s", out->id);
        cy_webhook_fini(out);
        return CY_ESTORE;
    }
    if (oom) {
        cy_webhook_fini(out);
        return CY_ENOMEM;
    }
    return 0;
}

/* ---- the API of hooks.h ---- */

void cy_webhook_fini(cy_webhook *w)
{
    if (!w) return;
    cy_free(w->event);
    cy_free(w->url);
    cy_free(w->headers);
    cy_free(w->body);
    cy_free(w->response_topic);
    cy_free(w->error_topic);
    w->event = w->url = w->headers = w->body = w->response_topic = w->error_topic = NULL;
    OPENSSL_cleanse(w->secret, sizeof(w->secret));
    OPENSSL_cleanse(w->old_secret, sizeof(w->old_secret));
}

static int count_rows(cy_registry *r, int64_t *n)
{
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_COUNT);
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        *n = sqlite3_column_int64(st, 0);
    else
        rc = cy_registry_fail(r, true, "webhook_add count");
    done(st);
    return rc;
}

int cy_registry_webhook_add(cy_registry *r, cy_webhook *w, unsigned max, char *why, size_t why_len)
{
    if (why && why_len) why[0] = '\0';
    if (!r || !w) return CY_EINVAL;
    int rc = check_fields(r, w, why, why_len);
    if (rc) return rc;
    char id[CY_WEBHOOK_ID_LEN + 1], secret[CY_WEBHOOK_SECRET_LEN];
    if ((rc = new_secret(secret))) return rc;
    int64_t now = cy_wall_ms();
    if ((rc = cy_registry_begin(r, "webhook_add begin"))) goto out;
    int64_t n = 0;
    int changed = count_rows(r, &n);
    if (!changed && n >= (int64_t)max) {
        why_set(why, why_len, "%s", "webhook_max reached");
        changed = CY_ERANGE;
    }
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_INSERT);
    /* 64-bit ids do not collide among a node's few webhooks; if one ever
     * does, draw again. */
    for (int attempt = 0; !changed; attempt++) {
        uint8_t raw[ID_BYTES];
        if ((changed = random_bytes(raw, sizeof(raw)))) break;
        new_id(id, raw);
        if (sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC) || bind_fields(st, w) ||
            sqlite3_bind_text(st, 14, secret, -1, SQLITE_STATIC) ||
            sqlite3_bind_int64(st, 15, now)) {
            changed = cy_registry_fail(r, true, "webhook_add");
            done(st);
            break;
        }
        int sr = sqlite3_step(st);
        int ext = sqlite3_extended_errcode(cy_registry_db(r));
        done(st);
        if (sr == SQLITE_DONE) {
            changed = 1;
            break;
        }
        if (ext != SQLITE_CONSTRAINT_PRIMARYKEY || attempt >= 3)
            changed = cy_registry_fail(r, true, "webhook_add");
    }
    if ((rc = finish(r, changed, "webhook_add commit"))) goto out;
    memcpy(w->id, id, sizeof(id));
    memcpy(w->secret, secret, sizeof(secret));
    w->old_secret[0] = '\0';
    w->old_secret_until = 0;
    w->created_at = w->updated_at = now;
    if (w->enabled) w->disabled_reason[0] = '\0';
out:
    OPENSSL_cleanse(secret, sizeof(secret));
    return rc;
}

int cy_registry_webhook_get(cy_registry *r, const char *id, cy_webhook *out)
{
    if (!r || !id || !out) return CY_EINVAL;
    memset(out, 0, sizeof(*out));
    if (!id_valid(id)) return CY_ENOENT;
    int rc = cy_registry_ready(r, false);
    if (rc) return rc;
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_GET);
    if (sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC)) {
        rc = cy_registry_fail(r, false, "webhook_get");
    } else {
        int sr = sqlite3_step(st);
        rc = sr == SQLITE_ROW    ? copy_row(st, out)
             : sr == SQLITE_DONE ? CY_ENOENT
                                 : cy_registry_fail(r, false, "webhook_get");
    }
    done(st);
    return rc;
}

int cy_registry_webhook_update(cy_registry *r, cy_webhook *w, char *why, size_t why_len)
{
    if (why && why_len) why[0] = '\0';
    if (!r || !w) return CY_EINVAL;
    if (!id_valid(w->id)) return CY_ENOENT;
    int rc = check_fields(r, w, why, why_len);
    if (rc) return rc;
    int64_t now = cy_wall_ms();
    if ((rc = cy_registry_begin(r, "webhook_update begin"))) return rc;
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_UPDATE);
    int changed;
    if (sqlite3_bind_text(st, 1, w->id, -1, SQLITE_STATIC) || bind_fields(st, w) ||
        sqlite3_bind_int64(st, 14, now)) {
        done(st);
        changed = cy_registry_fail(r, true, "webhook_update");
    } else {
        changed = run(r, st, "webhook_update");
    }
    if ((rc = finish(r, changed, "webhook_update commit"))) return rc;
    if (!changed) return CY_ENOENT;
    w->updated_at = now;
    if (w->enabled) w->disabled_reason[0] = '\0';
    return 0;
}

int cy_registry_webhook_delete(cy_registry *r, const char *id)
{
    if (!r || !id) return CY_EINVAL;
    if (!id_valid(id)) return CY_ENOENT;
    int rc = cy_registry_begin(r, "webhook_delete begin");
    if (rc) return rc;
    int changed = run_id(r, CY_RH_DELETE, id, "webhook_delete");
    if (changed > 0) {
        int gone = run_id(r, CY_RH_DELETE_REPLAYS, id, "webhook_delete replays");
        if (gone < 0) changed = gone;
    }
    if ((rc = finish(r, changed, "webhook_delete commit"))) return rc;
    return changed ? 0 : CY_ENOENT;
}

/* 1 if webhook id exists, 0 if not, CY_ESTORE (in the caller's transaction). */
static int exists(cy_registry *r, const char *id)
{
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_EXISTS);
    int rc;
    if (sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC)) {
        rc = cy_registry_fail(r, false, "webhook exists");
    } else {
        int sr = sqlite3_step(st);
        rc = sr == SQLITE_ROW    ? 1
             : sr == SQLITE_DONE ? 0
                                 : cy_registry_fail(r, false, "webhook exists");
    }
    done(st);
    return rc;
}

int cy_registry_webhook_set_enabled(cy_registry *r, const char *id, bool enabled,
                                    const char *reason)
{
    if (!r || !id) return CY_EINVAL;
    if (!reason || enabled) reason = "";
    if (strlen(reason) > REASON_MAX) return CY_EINVAL;
    if (!id_valid(id)) return CY_ENOENT;
    int rc = cy_registry_begin(r, "webhook_enable begin");
    if (rc) return rc;
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_ENABLE);
    int changed;
    if (sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC) || sqlite3_bind_int(st, 2, enabled) ||
        sqlite3_bind_text(st, 3, reason, -1, SQLITE_STATIC) ||
        sqlite3_bind_int64(st, 4, cy_wall_ms())) {
        done(st);
        changed = cy_registry_fail(r, true, "webhook_enable");
    } else {
        changed = run(r, st, "webhook_enable");
    }
    /* Nothing changed: already so, or no such webhook. */
    int found = changed == 0 ? exists(r, id) : 1;
    if (found < 0) changed = found;
    if ((rc = finish(r, changed, "webhook_enable commit"))) return rc;
    return found ? 0 : CY_ENOENT;
}

int cy_registry_webhook_rotate(cy_registry *r, const char *id,
                               char secret_out[CY_WEBHOOK_SECRET_LEN])
{
    if (!r || !id || !secret_out) return CY_EINVAL;
    secret_out[0] = '\0';
    if (!id_valid(id)) return CY_ENOENT;
    char secret[CY_WEBHOOK_SECRET_LEN];
    int rc = new_secret(secret);
    if (rc) return rc;
    int64_t now = cy_wall_ms();
    if ((rc = cy_registry_begin(r, "webhook_rotate begin"))) goto out;
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_ROTATE);
    int changed;
    if (sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC) ||
        sqlite3_bind_text(st, 2, secret, -1, SQLITE_STATIC) ||
        sqlite3_bind_int64(st, 3, now + CY_WEBHOOK_OLD_SECRET_MS) ||
        sqlite3_bind_int64(st, 4, now)) {
        done(st);
        changed = cy_registry_fail(r, true, "webhook_rotate");
    } else {
        changed = run(r, st, "webhook_rotate");
    }
    if ((rc = finish(r, changed, "webhook_rotate commit"))) goto out;
    if (!changed) {
        rc = CY_ENOENT;
        goto out;
    }
    memcpy(secret_out, secret, sizeof(secret));
out:
    OPENSSL_cleanse(secret, sizeof(secret));
    return rc;
}

int cy_registry_webhook_list(cy_registry *r, int (*fn)(void *ctx, const cy_webhook *w), void *ctx)
{
    if (!r || !fn) return CY_EINVAL;
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_NEXT);
    int64_t after = 0; /* rowids start at 1 */
    for (;;) {
        int rc = cy_registry_ready(r, false);
        if (rc) return rc;
        if (sqlite3_bind_int64(st, 1, after)) {
            done(st);
            return cy_registry_fail(r, false, "webhook_list");
        }
        int sr = sqlite3_step(st);
        if (sr == SQLITE_DONE) {
            done(st);
            return 0;
        }
        cy_webhook w;
        rc = sr == SQLITE_ROW ? copy_row(st, &w) : cy_registry_fail(r, false, "webhook_list");
        if (!rc) after = sqlite3_column_int64(st, 18);
        done(st); /* before fn: it may call the registry */
        if (rc) return rc;
        rc = fn(ctx, &w);
        cy_webhook_fini(&w);
        if (rc) return rc;
    }
}

int cy_registry_webhooks_gen(cy_registry *r, uint64_t *gen)
{
    if (!r || !gen) return CY_EINVAL;
    int rc = cy_registry_ready(r, false);
    if (rc) return rc;
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_GEN);
    if (sqlite3_step(st) == SQLITE_ROW)
        *gen = (uint64_t)sqlite3_column_int64(st, 0);
    else
        rc = cy_registry_fail(r, false, "webhooks_gen");
    done(st);
    return rc;
}

int cy_registry_webhook_replay(cy_registry *r, const char *id, unsigned shard, uint64_t seq)
{
    if (!r || !id || seq > INT64_MAX) return CY_EINVAL;
    if (!id_valid(id)) return CY_ENOENT;
    int rc = cy_registry_begin(r, "webhook_replay begin");
    if (rc) return rc;
    int found = exists(r, id), changed = found;
    if (found > 0) {
        sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_REPLAY);
        if (sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC) || sqlite3_bind_int64(st, 2, shard) ||
            sqlite3_bind_int64(st, 3, (int64_t)seq)) {
            done(st);
            changed = cy_registry_fail(r, true, "webhook_replay");
        } else {
            changed = run(r, st, "webhook_replay"); /* 0: the same request is waiting */
        }
    }
    if ((rc = finish(r, changed, "webhook_replay commit"))) return rc;
    return found ? 0 : CY_ENOENT;
}

/* A replay request read, waiting for its callback. */
typedef struct replay_row {
    int64_t rowid;
    uint64_t seq;
    char id[CY_WEBHOOK_ID_LEN + 1];
} replay_row;

/* Delete the rows rows[0..n) in one transaction. */
static int replays_delete(cy_registry *r, const replay_row *rows, size_t n)
{
    if (n == 0) return 0;
    int rc = cy_registry_begin(r, "webhook_replays_take begin");
    if (rc) return rc;
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_REPLAY_DONE);
    int changed = 0;
    for (size_t i = 0; i < n && changed >= 0; i++) {
        if (sqlite3_bind_int64(st, 1, rows[i].rowid)) {
            done(st);
            changed = cy_registry_fail(r, true, "webhook_replays_take");
        } else {
            changed = run(r, st, "webhook_replays_take");
        }
    }
    /* No bump: see the top of this file. */
    rc = changed < 0 ? changed : cy_registry_commit(r, "webhook_replays_take commit");
    if (rc) cy_registry_rollback(r);
    return rc;
}

int cy_registry_webhook_replays_take(cy_registry *r, unsigned shard,
                                     int (*fn)(void *ctx, const char *id, uint64_t seq), void *ctx)
{
    if (!r || !fn) return CY_EINVAL;
    int rc = cy_registry_ready(r, false);
    if (rc) return rc;
    /* Read them all first, so that no statement is open while fn runs;
     * delete those fn took after: a crash in between replays again rather
     * than never (a replay is asked to deliver, at least once). */
    replay_row *rows = NULL;
    size_t n = 0, cap = 0;
    sqlite3_stmt *st = cy_registry_hook_st(r, CY_RH_REPLAYS);
    int sr = SQLITE_DONE;
    if (sqlite3_bind_int64(st, 1, shard)) {
        rc = cy_registry_fail(r, false, "webhook_replays_take");
    } else {
        while ((sr = sqlite3_step(st)) == SQLITE_ROW) {
            if (n == cap) {
                size_t ncap = cap ? 2 * cap : 16;
                replay_row *nr = cy_malloc(ncap * sizeof(*nr));
                if (!nr) {
                    rc = CY_ENOMEM;
                    break;
                }
                if (n) memcpy(nr, rows, n * sizeof(*nr));
                cy_free(rows);
                rows = nr;
                cap = ncap;
            }
            replay_row *row = &rows[n];
            row->rowid = sqlite3_column_int64(st, 0);
            row->seq = (uint64_t)sqlite3_column_int64(st, 2);
            if (!copy_col(st, 1, row->id, sizeof(row->id)))
                continue; /* corrupt: not ours to take */
            n++;
        }
        if (!rc && sr != SQLITE_DONE) rc = cy_registry_fail(r, false, "webhook_replays_take");
    }
    done(st);
    size_t taken = 0;
    while (!rc && taken < n) {
        rc = fn(ctx, rows[taken].id, rows[taken].seq);
        if (!rc) taken++;
    }
    int del = replays_delete(r, rows, taken);
    cy_free(rows);
    return rc ? rc : del;
}
