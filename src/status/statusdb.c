/* statusdb: incidents and the timeline in SQLite; see statusdb.h.
 *
 * Tables (schema version 1):
 *   timeline          the events, rowid = id; indexed by time
 *   incidents         id AUTOINCREMENT (never reused after a trim, so a link
 *                     to an incident never lands on another one); statuses,
 *                     impacts and kinds are stored as their words, so the
 *                     file reads well in the sqlite3 shell
 *   incident_updates  newest first by id
 *   incident_alerts   the alerts that opened or joined an incident (history)
 *   alerts            the firing set: one row per alert firing now, with the
 *                     incident it belongs to (0: none); what makes a second
 *                     "fired" of the same alert change nothing
 *   meta              key/value: the last start recorded per component
 */
#include "status/statusdb.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "store/db.h"

#include <errno.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SCHEMA_VERSION 1

static const char schema_v1[] =
    "CREATE TABLE timeline("
    " id INTEGER PRIMARY KEY,"
    " time_ms INTEGER NOT NULL,"
    " kind TEXT NOT NULL,"
    " component TEXT NOT NULL DEFAULT '',"
    " text TEXT NOT NULL,"
    " details TEXT);"
    "CREATE INDEX timeline_time ON timeline(time_ms);"
    "CREATE TABLE incidents("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " name TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " impact TEXT NOT NULL,"
    " components TEXT NOT NULL DEFAULT '',"
    " started_ms INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL,"
    " monitoring_ms INTEGER NOT NULL DEFAULT 0,"
    " resolved_ms INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX incidents_resolved ON incidents(resolved_ms);"
    "CREATE TABLE incident_updates("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " incident_id INTEGER NOT NULL,"
    " status TEXT NOT NULL,"
    " body TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL);"
    "CREATE INDEX incident_updates_incident ON incident_updates(incident_id, id);"
    "CREATE TABLE incident_alerts("
    " incident_id INTEGER NOT NULL,"
    " fingerprint TEXT NOT NULL,"
    " alertname TEXT NOT NULL,"
    " since_ms INTEGER NOT NULL,"
    " cleared_ms INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY(incident_id, fingerprint));"
    "CREATE TABLE alerts("
    " fingerprint TEXT PRIMARY KEY NOT NULL,"
    " alertname TEXT NOT NULL,"
    " severity TEXT NOT NULL,"
    " component TEXT NOT NULL,"
    " since_ms INTEGER NOT NULL,"
    " incident_id INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX alerts_incident ON alerts(incident_id);"
    "CREATE INDEX alerts_component ON alerts(component);"
    "CREATE TABLE meta(key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);"
    "PRAGMA user_version = 1;";

static const char *const migrations[] = {NULL};

enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_TL_ADD,
    ST_TL_LIST,
    ST_TL_TRIM,
    ST_INC_TRIM_UPDATES,
    ST_INC_TRIM_ALERTS,
    ST_INC_TRIM,
    ST_META_GET,
    ST_META_SET,
    ST_FIRING_GET,
    ST_FIRING_ADD,
    ST_FIRING_DEL,
    ST_FIRING_SET_INCIDENT,
    ST_FIRING_ALL,
    ST_FIRING_JOINABLE,
    ST_FIRING_COUNT,
    ST_INC_ADD,
    ST_INC_GET,
    ST_INC_SET,
    ST_INC_LIST,
    ST_UPD_ADD,
    ST_UPD_LIST,
    ST_IA_ADD,
    ST_IA_CLEAR,
    ST_IA_LIST,
    N_ST
};

#define INCIDENT_COLS                                                                              \
    "id, name, status, impact, components, started_ms, created_ms, updated_ms, monitoring_ms,"     \
    " resolved_ms"

static const char *const sql[N_ST] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_TL_ADD] = "INSERT INTO timeline(time_ms, kind, component, text, details)"
                  " VALUES(?1, ?2, ?3, ?4, ?5)",
    [ST_TL_LIST] = "SELECT id, time_ms, kind, component, text, details FROM timeline"
                   " WHERE time_ms >= ?1 ORDER BY time_ms DESC, id DESC LIMIT ?2",
    [ST_TL_TRIM] = "DELETE FROM timeline WHERE time_ms < ?1 OR id IN (SELECT id FROM timeline"
                   " ORDER BY time_ms DESC, id DESC LIMIT -1 OFFSET ?2)",
    [ST_INC_TRIM_UPDATES] = "DELETE FROM incident_updates WHERE incident_id IN (SELECT id FROM"
                            " incidents WHERE resolved_ms > 0 AND resolved_ms < ?1)",
    [ST_INC_TRIM_ALERTS] = "DELETE FROM incident_alerts WHERE incident_id IN (SELECT id FROM"
                           " incidents WHERE resolved_ms > 0 AND resolved_ms < ?1)",
    [ST_INC_TRIM] = "DELETE FROM incidents WHERE resolved_ms > 0 AND resolved_ms < ?1",
    [ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
    [ST_META_SET] = "INSERT INTO meta(key, value) VALUES(?1, ?2)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    [ST_FIRING_GET] = "SELECT alertname, severity, component, since_ms, incident_id FROM alerts"
                      " WHERE fingerprint = ?1",
    [ST_FIRING_ADD] = "INSERT INTO alerts(fingerprint, alertname, severity, component, since_ms,"
                      " incident_id) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [ST_FIRING_DEL] = "DELETE FROM alerts WHERE fingerprint = ?1",
    [ST_FIRING_SET_INCIDENT] = "UPDATE alerts SET incident_id = ?2 WHERE fingerprint = ?1",
    [ST_FIRING_ALL] = "SELECT fingerprint FROM alerts ORDER BY rowid",
    /* An unresolved incident of this component that a firing alert opened or joined. */
    [ST_FIRING_JOINABLE] = "SELECT i.id FROM alerts a JOIN incidents i"
                           " ON i.id = a.incident_id WHERE a.component = ?1 AND"
                           " i.resolved_ms = 0 ORDER BY i.id LIMIT 1",
    [ST_FIRING_COUNT] = "SELECT count(*) FROM alerts WHERE incident_id = ?1",
    [ST_INC_ADD] = "INSERT INTO incidents(name, status, impact, components, started_ms,"
                   " created_ms, updated_ms, monitoring_ms, resolved_ms)"
                   " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
    [ST_INC_GET] = "SELECT " INCIDENT_COLS " FROM incidents WHERE id = ?1",
    [ST_INC_SET] = "UPDATE incidents SET status = ?2, impact = ?3, updated_ms = ?4,"
                   " monitoring_ms = ?5, resolved_ms = ?6 WHERE id = ?1",
    [ST_INC_LIST] = "SELECT " INCIDENT_COLS " FROM incidents WHERE resolved_ms = 0 OR ?1 = 0"
                    " ORDER BY resolved_ms != 0, id DESC LIMIT ?2",
    [ST_UPD_ADD] = "INSERT INTO incident_updates(incident_id, status, body, created_ms)"
                   " VALUES(?1, ?2, ?3, ?4)",
    [ST_UPD_LIST] = "SELECT id, status, body, created_ms FROM incident_updates"
                    " WHERE incident_id = ?1 ORDER BY id DESC",
    [ST_IA_ADD] = "INSERT INTO incident_alerts(incident_id, fingerprint, alertname, since_ms)"
                  " VALUES(?1, ?2, ?3, ?4) ON CONFLICT(incident_id, fingerprint) DO UPDATE"
                  " SET since_ms = excluded.since_ms, cleared_ms = 0",
    [ST_IA_CLEAR] = "UPDATE incident_alerts SET cleared_ms = ?3"
                    " WHERE incident_id = ?1 AND fingerprint = ?2",
    [ST_IA_LIST] = "SELECT fingerprint, alertname, since_ms, cleared_ms FROM incident_alerts"
                   " WHERE incident_id = ?1 ORDER BY rowid",
};

#define DAY_MS (24LL * 3600 * 1000)

struct cy_statusdb {
    sqlite3 *db;
    sqlite3_stmt *st[N_ST];
    cy_statusdb_opts o; /* defaults filled in */
    uint32_t appends;   /* since the last trim */
    char err[256];      /* SQLite's message for the last failure */
};

/* ---- words ---- */

static const char *const kind_names[CY_TL_KINDS] = {
    "deploy",          "start",           "restart",           "alert_firing", "alert_resolved",
    "incident_opened", "incident_update", "incident_resolved", "note",
};
static const char *const status_names[CY_INCIDENT_STATUSES] = {"investigating", "identified",
                                                               "monitoring", "resolved"};
static const char *const impact_names[CY_IMPACTS] = {"none", "minor", "major", "critical"};

static int parse_word(const char *w, const char *const *names, int n)
{
    if (!w) return CY_EINVAL;
    for (int i = 0; i < n; i++)
        if (!strcmp(w, names[i])) return i;
    return CY_EINVAL;
}

const char *cy_timeline_kind_name(int kind)
{
    return kind >= 0 && kind < CY_TL_KINDS ? kind_names[kind] : "?";
}

int cy_timeline_kind_parse(const char *word)
{
    return parse_word(word, kind_names, CY_TL_KINDS);
}

const char *cy_incident_status_name(int status)
{
    return status >= 0 && status < CY_INCIDENT_STATUSES ? status_names[status] : "?";
}

int cy_incident_status_parse(const char *word)
{
    return parse_word(word, status_names, CY_INCIDENT_STATUSES);
}

const char *cy_incident_impact_name(int impact)
{
    return impact >= 0 && impact < CY_IMPACTS ? impact_names[impact] : "?";
}

int cy_incident_impact_parse(const char *word)
{
    return parse_word(word, impact_names, CY_IMPACTS);
}

/* ---- validation ---- */

bool cy_status_id_valid(const char *id)
{
    if (!id) return false;
    size_t n = strlen(id);
    if (n == 0 || n > CY_STATUS_ID_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
    }
    return true;
}

/* Whether s is min..max bytes of UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF) without control characters, but for
 * newline, carriage return and tab when multiline. NULL reads as "". */
static bool text_ok(const char *s, size_t min, size_t max, bool multiline)
{
    if (!s) s = "";
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    if (n < min || n > max) return false;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c < 0x80) {
            if (c == 0x7f) return false;
            if (c < 0x20 && !(multiline && (c == '\n' || c == '\r' || c == '\t'))) return false;
            i++;
            continue;
        }
        size_t len;
        unsigned cp;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + len > n) return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

static bool printable_ascii(const char *s, size_t max)
{
    if (!s) return false;
    size_t n = strlen(s);
    if (n == 0 || n > max) return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f) return false;
    return true;
}

static const char *str(const char *s)
{
    return s ? s : "";
}

int cy_status_alert_component(const cy_status_alert *a, char out[CY_STATUS_ID_MAX + 1])
{
    out[0] = '\0';
    const char *shard = str(a->shard);
    if (shard[0]) {
        size_t n = strlen(shard);
        if (n > 2 || (n == 2 && shard[0] == '0')) return CY_EINVAL; /* 0..63, one spelling */
        for (size_t i = 0; i < n; i++)
            if (shard[i] < '0' || shard[i] > '9') return CY_EINVAL;
        snprintf(out, CY_STATUS_ID_MAX + 1, "shard-%s", shard);
        return 0;
    }
    if (!cy_status_id_valid(a->component)) return CY_EINVAL;
    snprintf(out, CY_STATUS_ID_MAX + 1, "%s", a->component);
    return 0;
}

/* ---- small text helpers ---- */

/* Cut s back to whole UTF-8 characters (after a truncating snprintf). */
static void utf8_cut(char *s)
{
    size_t n = strlen(s);
    if (n == 0) return;
    size_t i = n;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xc0) == 0x80)
        i--;
    if (i == 0) {
        s[0] = '\0';
        return;
    }
    unsigned char lead = (unsigned char)s[i - 1];
    size_t want = lead < 0x80 ? 1 : lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
    if (n - (i - 1) < want) s[i - 1] = '\0';
}

void cy_status_rfc3339(int64_t ms, char out[CY_STATUS_TIME_LEN])
{
    if (ms < 0) ms = 0;
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char s[24];
    strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, CY_STATUS_TIME_LEN, "%s.%03dZ", s, (int)(ms % 1000));
}

void cy_status_duration(int64_t ms, char out[CY_STATUS_TIME_LEN])
{
    int64_t s = (ms < 0 ? 0 : ms) / 1000;
    if (s < 60)
        snprintf(out, CY_STATUS_TIME_LEN, "%lld s", (long long)s);
    else if (s < 3600)
        snprintf(out, CY_STATUS_TIME_LEN, "%lld min %lld s", (long long)(s / 60),
                 (long long)(s % 60));
    else if (s < 86400)
        snprintf(out, CY_STATUS_TIME_LEN, "%lld h %lld min", (long long)(s / 3600),
                 (long long)(s % 3600 / 60));
    else
        snprintf(out, CY_STATUS_TIME_LEN, "%lld d %lld h", (long long)(s / 86400),
                 (long long)(s % 86400 / 3600));
}

/* ---- SQLite plumbing ---- */

static bool out_of_space(sqlite3 *db)
{
    int e = sqlite3_extended_errcode(db);
    if ((e & 0xff) == SQLITE_FULL) return true;
    if ((e & 0xff) != SQLITE_IOERR) return false;
    int sys = sqlite3_system_errno(db);
    return sys == ENOSPC || sys == EDQUOT;
}

/* Remember SQLite's message and map its error: CY_ENOSPC, CY_EBUSY or
 * CY_ESTORE. Not logged: the caller logs (see the header). */
static int fail(cy_statusdb *d)
{
    snprintf(d->err, sizeof(d->err), "%s", sqlite3_errmsg(d->db));
    if (out_of_space(d->db)) return CY_ENOSPC;
    int e = sqlite3_errcode(d->db) & 0xff;
    if (e == SQLITE_NOMEM) return CY_ENOMEM;
    if (e == SQLITE_BUSY || e == SQLITE_LOCKED) return CY_EBUSY;
    return CY_ESTORE;
}

static void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Bind helpers: text is bound SQLITE_STATIC (alive until the statement is reset). */
static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    sqlite3_bind_text(st, i, s ? s : "", -1, SQLITE_STATIC);
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* Step a statement that returns no row, then reset it. */
static int run(cy_statusdb *d, int which)
{
    sqlite3_stmt *st = d->st[which];
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : fail(d);
    done(st);
    return rc;
}

static int begin(cy_statusdb *d)
{
    d->err[0] = '\0';
    return run(d, ST_BEGIN);
}

/* Commit when rc is 0, else roll back; returns rc or the commit's error. */
static int finish(cy_statusdb *d, int rc)
{
    if (rc == 0) rc = run(d, ST_COMMIT);
    if (rc && !sqlite3_get_autocommit(d->db)) {
        /* A failed COMMIT (or a statement) may have ended the transaction
         * itself (SQLITE_FULL can); only roll back what is still open. */
        sqlite3_step(d->st[ST_ROLLBACK]);
        done(d->st[ST_ROLLBACK]);
    }
    return rc;
}

static char *col_dup(sqlite3_stmt *st, int i)
{
    const char *s = (const char *)sqlite3_column_text(st, i);
    return cy_strdup(s ? s : "");
}

static void col_copy(sqlite3_stmt *st, int i, char *out, size_t len)
{
    const char *s = (const char *)sqlite3_column_text(st, i);
    snprintf(out, len, "%s", s ? s : "");
}

/* ---- trimming ---- */

static int trim(cy_statusdb *d, int64_t now_ms)
{
    sqlite3_stmt *st = d->st[ST_TL_TRIM];
    sqlite3_bind_int64(st, 1, now_ms - d->o.timeline_keep_ms);
    sqlite3_bind_int64(st, 2, d->o.timeline_keep);
    int rc = run(d, ST_TL_TRIM);
    int64_t before = now_ms - d->o.incident_keep_ms;
    static const int inc[] = {ST_INC_TRIM_UPDATES, ST_INC_TRIM_ALERTS, ST_INC_TRIM};
    for (size_t i = 0; rc == 0 && i < sizeof(inc) / sizeof(inc[0]); i++) {
        sqlite3_bind_int64(d->st[inc[i]], 1, before);
        rc = run(d, inc[i]);
    }
    d->appends = 0;
    return rc;
}

/* ---- open / close ---- */

static int int_cb(void *ctx, int ncol, char **vals, char **names)
{
    (void)names;
    if (ncol > 0 && vals[0]) *(long long *)ctx = strtoll(vals[0], NULL, 10);
    return 0;
}

int cy_statusdb_open(const char *path, const cy_statusdb_opts *opts, int64_t now_ms,
                     cy_statusdb **out)
{
    if (!path || !out) return CY_EINVAL;
    *out = NULL;
    cy_statusdb *d = cy_calloc(1, sizeof(*d));
    if (!d) return CY_ENOMEM;
    if (opts) d->o = *opts;
    if (d->o.timeline_keep_ms <= 0) d->o.timeline_keep_ms = 30 * DAY_MS;
    if (d->o.timeline_keep == 0) d->o.timeline_keep = 100000;
    if (d->o.trim_every == 0) d->o.trim_every = 256;
    if (d->o.incident_keep_ms <= 0) d->o.incident_keep_ms = 90 * DAY_MS;
    if (d->o.max_bytes == 0) d->o.max_bytes = 256ULL << 20;
    if (d->o.busy_ms == 0) d->o.busy_ms = 200;
    static const cy_db_schema schema = {"monitor", SCHEMA_VERSION, schema_v1, migrations, true};
    int rc = cy_db_open(path, false, &schema, sql, N_ST, &d->db, d->st);
    if (rc) goto fail;
    sqlite3_busy_timeout(d->db, (int)d->o.busy_ms);
    long long page = 0;
    char pragma[80];
    if (sqlite3_exec(d->db, "PRAGMA page_size", int_cb, &page, NULL) != SQLITE_OK || page <= 0) {
        rc = fail(d);
        goto fail;
    }
    unsigned long long pages = d->o.max_bytes / (unsigned long long)page;
    snprintf(pragma, sizeof(pragma), "PRAGMA max_page_count = %llu", pages ? pages : 1);
    if (sqlite3_exec(d->db, pragma, NULL, NULL, NULL) != SQLITE_OK) {
        rc = fail(d);
        goto fail;
    }
    rc = begin(d);
    if (rc == 0) rc = finish(d, trim(d, now_ms));
    if (rc == CY_ENOSPC || rc == CY_EBUSY) {
        /* A full disk or another writer: the file still reads, so the page
         * can show what it holds; the next append trims again. */
        d->appends = d->o.trim_every - 1;
        rc = 0;
    }
    if (rc) goto fail;
    /* Give back what the trim freed (the file shrinks on a long-running node). */
    cy_db_reclaim(d->db, "monitor", 1024);
    *out = d;
    return 0;
fail:
    cy_statusdb_close(d);
    return rc;
}

void cy_statusdb_close(cy_statusdb *d)
{
    if (!d) return;
    for (int i = 0; i < N_ST; i++)
        sqlite3_finalize(d->st[i]);
    if (d->db) sqlite3_close(d->db);
    cy_free(d);
}

const char *cy_statusdb_errmsg(const cy_statusdb *d)
{
    return d ? d->err : "";
}

/* ---- timeline ---- */

/* Inside a transaction: one event, and a trim every trim_every. */
static int tl_add(cy_statusdb *d, int kind, const char *component, const char *text,
                  const char *details, int64_t time_ms, int64_t *id)
{
    sqlite3_stmt *st = d->st[ST_TL_ADD];
    sqlite3_bind_int64(st, 1, time_ms);
    bind_text(st, 2, kind_names[kind]);
    bind_text(st, 3, component);
    bind_text(st, 4, text);
    bind_text_or_null(st, 5, details);
    int rc = run(d, ST_TL_ADD);
    if (rc) return rc;
    if (id) *id = sqlite3_last_insert_rowid(d->db);
    if (++d->appends >= d->o.trim_every) rc = trim(d, time_ms);
    return rc;
}

static bool details_ok(const char *details)
{
    if (!details) return true;
    if (strlen(details) > CY_STATUS_DETAILS_MAX) return false;
    json_t *j = json_loads(details, JSON_REJECT_DUPLICATES, NULL);
    bool ok = j && json_is_object(j);
    json_decref(j);
    return ok;
}

int cy_statusdb_timeline_append(cy_statusdb *d, int kind, const char *component, const char *text,
                                const char *details, int64_t time_ms, int64_t *id)
{
    if (!d || kind < 0 || kind >= CY_TL_KINDS || time_ms < 0) return CY_EINVAL;
    if (component && component[0] && !cy_status_id_valid(component)) return CY_EINVAL;
    if (!text_ok(text, 1, CY_STATUS_TEXT_MAX, true) || !details_ok(details)) return CY_EINVAL;
    int rc = begin(d);
    if (rc) return rc;
    return finish(d, tl_add(d, kind, str(component), text, details, time_ms, id));
}

/* The compact text of obj (a new reference, taken), or NULL when obj is
 * NULL (json_pack failed) or out of memory. Caller frees with free():
 * jansson's allocator. */
static char *details_of(json_t *obj)
{
    if (!obj) return NULL;
    char *s = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    return s;
}

int cy_statusdb_record_start(cy_statusdb *d, const char *component, const char *version,
                             const char *commit, int64_t started_ms, bool *deploy)
{
    if (deploy) *deploy = false;
    if (!d || started_ms < 0) return CY_EINVAL;
    component = str(component);
    if (component[0] && !cy_status_id_valid(component)) return CY_EINVAL;
    if (!printable_ascii(version, CY_STATUS_VERSION_MAX) ||
        !printable_ascii(commit, CY_STATUS_VERSION_MAX))
        return CY_EINVAL;
    char key[64];
    snprintf(key, sizeof(key), "start:%s", component);
    int rc = begin(d);
    if (rc) return rc;
    /* The last start recorded for this component. */
    char last_version[CY_STATUS_VERSION_MAX + 1] = "", last_commit[CY_STATUS_VERSION_MAX + 1] = "";
    int64_t last_ms = -1;
    sqlite3_stmt *st = d->st[ST_META_GET];
    bind_text(st, 1, key);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        json_t *j = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
        const char *v = json_string_value(json_object_get(j, "version"));
        const char *c = json_string_value(json_object_get(j, "commit"));
        json_t *t = json_object_get(j, "started_ms");
        snprintf(last_version, sizeof(last_version), "%s", v ? v : "");
        snprintf(last_commit, sizeof(last_commit), "%s", c ? c : "");
        if (json_is_integer(t)) last_ms = json_integer_value(t);
        json_decref(j);
    } else if (s != SQLITE_DONE) {
        rc = fail(d);
    }
    done(st);
    if (rc || last_ms == started_ms) return finish(d, rc);

    bool is_deploy = strcmp(last_version, version) || strcmp(last_commit, commit);
    const char *who = component[0] ? component : "node";
    char text[CY_STATUS_TEXT_MAX + 1];
    char *details = details_of(json_pack("{s:s, s:s}", "version", version, "commit", commit));
    if (!details) rc = CY_ENOMEM;
    if (rc == 0 && is_deploy) {
        if (last_version[0])
            snprintf(text, sizeof(text), "deploy: %s now runs cyan %s (commit %s), was %s (%s)",
                     who, version, commit, last_version, last_commit);
        else
            snprintf(text, sizeof(text),
                     "deploy: %s runs cyan %s (commit %s), first start recorded", who, version,
                     commit);
        rc = tl_add(d, CY_TL_DEPLOY, component, text, details, started_ms, NULL);
    }
    if (rc == 0) {
        snprintf(text, sizeof(text), "%s started: cyan %s (commit %s)", who, version, commit);
        rc = tl_add(d, CY_TL_START, component, text, details, started_ms, NULL);
    }
    free(details);
    char *value = NULL;
    if (rc == 0) {
        value = details_of(json_pack("{s:s, s:s, s:I}", "version", version, "commit", commit,
                                     "started_ms", (json_int_t)started_ms));
        if (!value) rc = CY_ENOMEM;
    }
    if (rc == 0) {
        st = d->st[ST_META_SET];
        bind_text(st, 1, key);
        bind_text(st, 2, value);
        rc = run(d, ST_META_SET);
    }
    free(value);
    rc = finish(d, rc);
    if (rc == 0 && deploy) *deploy = is_deploy;
    return rc;
}

void cy_timeline_list_fini(cy_timeline_list *l)
{
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        cy_free(l->v[i].text);
        cy_free(l->v[i].details);
    }
    cy_free(l->v);
    l->v = NULL;
    l->n = 0;
}

int cy_statusdb_timeline_list(cy_statusdb *d, int64_t since_ms, size_t limit, cy_timeline_list *out)
{
    if (!out) return CY_EINVAL;
    memset(out, 0, sizeof(*out));
    if (!d || limit == 0 || limit > CY_STATUSDB_LIST_MAX) return CY_EINVAL;
    d->err[0] = '\0';
    sqlite3_stmt *st = d->st[ST_TL_LIST];
    sqlite3_bind_int64(st, 1, since_ms);
    sqlite3_bind_int64(st, 2, (int64_t)limit);
    size_t cap = 0;
    int rc = 0, s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (out->n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            cy_timeline_event *v = cy_realloc(out->v, ncap * sizeof(*v));
            if (!v) {
                rc = CY_ENOMEM;
                break;
            }
            out->v = v;
            cap = ncap;
        }
        cy_timeline_event *e = &out->v[out->n];
        memset(e, 0, sizeof(*e));
        e->id = sqlite3_column_int64(st, 0);
        e->time_ms = sqlite3_column_int64(st, 1);
        int kind = cy_timeline_kind_parse((const char *)sqlite3_column_text(st, 2));
        e->kind = kind < 0 ? CY_TL_NOTE : kind; /* a word from a newer cyan: shown as a note */
        col_copy(st, 3, e->component, sizeof(e->component));
        e->text = col_dup(st, 4);
        if (sqlite3_column_type(st, 5) != SQLITE_NULL) e->details = col_dup(st, 5);
        out->n++; /* counted before the check, so fini frees what was copied */
        if (!e->text || (sqlite3_column_type(st, 5) != SQLITE_NULL && !e->details)) {
            rc = CY_ENOMEM;
            break;
        }
    }
    if (rc == 0 && s != SQLITE_DONE) rc = fail(d);
    done(st);
    if (rc) cy_timeline_list_fini(out);
    return rc;
}

/* ---- incidents: reading ---- */

void cy_incident_fini(cy_incident *inc)
{
    if (!inc) return;
    cy_free(inc->name);
    for (size_t i = 0; i < inc->nupdates; i++)
        cy_free(inc->updates[i].body);
    cy_free(inc->updates);
    cy_free(inc->alerts);
    memset(inc, 0, sizeof(*inc));
}

void cy_incident_list_fini(cy_incident_list *l)
{
    if (!l) return;
    for (size_t i = 0; i < l->n; i++)
        cy_incident_fini(&l->v[i]);
    cy_free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void parse_components(cy_incident *inc, const char *list)
{
    inc->ncomponents = 0;
    while (list && *list && inc->ncomponents < CY_STATUS_COMPONENTS_PER_INCIDENT) {
        const char *comma = strchr(list, ',');
        size_t n = comma ? (size_t)(comma - list) : strlen(list);
        if (n > 0 && n <= CY_STATUS_ID_MAX) {
            memcpy(inc->components[inc->ncomponents], list, n);
            inc->components[inc->ncomponents][n] = '\0';
            inc->ncomponents++;
        }
        list = comma ? comma + 1 : NULL;
    }
}

static int word_col(sqlite3_stmt *st, int i, int (*parse)(const char *), int fallback)
{
    int v = parse((const char *)sqlite3_column_text(st, i));
    return v < 0 ? fallback : v;
}

/* The incident row at st's cursor (INCIDENT_COLS) into inc (zeroed). */
static int read_row(sqlite3_stmt *st, cy_incident *inc)
{
    inc->id = sqlite3_column_int64(st, 0);
    inc->name = col_dup(st, 1);
    inc->status = word_col(st, 2, cy_incident_status_parse, CY_INCIDENT_INVESTIGATING);
    inc->impact = word_col(st, 3, cy_incident_impact_parse, CY_IMPACT_NONE);
    parse_components(inc, (const char *)sqlite3_column_text(st, 4));
    inc->started_ms = sqlite3_column_int64(st, 5);
    inc->created_ms = sqlite3_column_int64(st, 6);
    inc->updated_ms = sqlite3_column_int64(st, 7);
    inc->monitoring_ms = sqlite3_column_int64(st, 8);
    inc->resolved_ms = sqlite3_column_int64(st, 9);
    return inc->name ? 0 : CY_ENOMEM;
}

/* Updates and alerts of inc (its row read). */
static int read_children(cy_statusdb *d, cy_incident *inc)
{
    int rc = 0, s;
    size_t cap = 0;
    sqlite3_stmt *st = d->st[ST_UPD_LIST];
    sqlite3_bind_int64(st, 1, inc->id);
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (inc->nupdates == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            cy_incident_update *v = cy_realloc(inc->updates, ncap * sizeof(*v));
            if (!v) {
                rc = CY_ENOMEM;
                break;
            }
            inc->updates = v;
            cap = ncap;
        }
        cy_incident_update *u = &inc->updates[inc->nupdates];
        u->id = sqlite3_column_int64(st, 0);
        u->incident_id = inc->id;
        u->status = word_col(st, 1, cy_incident_status_parse, CY_INCIDENT_INVESTIGATING);
        u->body = col_dup(st, 2);
        u->created_ms = sqlite3_column_int64(st, 3);
        if (!u->body) {
            rc = CY_ENOMEM;
            break;
        }
        inc->nupdates++;
    }
    if (rc == 0 && s != SQLITE_DONE) rc = fail(d);
    done(st);
    if (rc) return rc;
    cap = 0;
    st = d->st[ST_IA_LIST];
    sqlite3_bind_int64(st, 1, inc->id);
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (inc->nalerts == cap) {
            size_t ncap = cap ? cap * 2 : 2;
            cy_incident_alert *v = cy_realloc(inc->alerts, ncap * sizeof(*v));
            if (!v) {
                rc = CY_ENOMEM;
                break;
            }
            inc->alerts = v;
            cap = ncap;
        }
        cy_incident_alert *a = &inc->alerts[inc->nalerts++];
        col_copy(st, 0, a->fingerprint, sizeof(a->fingerprint));
        col_copy(st, 1, a->alertname, sizeof(a->alertname));
        a->since_ms = sqlite3_column_int64(st, 2);
        a->cleared_ms = sqlite3_column_int64(st, 3);
    }
    if (rc == 0 && s != SQLITE_DONE) rc = fail(d);
    done(st);
    return rc;
}

/* Inside or outside a transaction: incident id into *out (zeroed first). */
static int get(cy_statusdb *d, int64_t id, cy_incident *out)
{
    memset(out, 0, sizeof(*out));
    sqlite3_stmt *st = d->st[ST_INC_GET];
    sqlite3_bind_int64(st, 1, id);
    int s = sqlite3_step(st), rc;
    if (s == SQLITE_ROW)
        rc = read_row(st, out);
    else
        rc = s == SQLITE_DONE ? CY_ENOENT : fail(d);
    done(st);
    if (rc == 0) rc = read_children(d, out);
    if (rc) cy_incident_fini(out);
    return rc;
}

int cy_statusdb_incident_get(cy_statusdb *d, int64_t id, cy_incident *out)
{
    if (!out) return CY_EINVAL;
    memset(out, 0, sizeof(*out));
    if (!d) return CY_EINVAL;
    if (id <= 0) return CY_ENOENT;
    d->err[0] = '\0';
    return get(d, id, out);
}

int cy_statusdb_incident_list(cy_statusdb *d, bool unresolved_only, size_t limit,
                              cy_incident_list *out)
{
    if (!out) return CY_EINVAL;
    memset(out, 0, sizeof(*out));
    if (!d || limit == 0 || limit > CY_STATUSDB_LIST_MAX) return CY_EINVAL;
    d->err[0] = '\0';
    sqlite3_stmt *st = d->st[ST_INC_LIST];
    sqlite3_bind_int(st, 1, unresolved_only ? 1 : 0);
    sqlite3_bind_int64(st, 2, (int64_t)limit);
    size_t cap = 0;
    int rc = 0, s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (out->n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            cy_incident *v = cy_realloc(out->v, ncap * sizeof(*v));
            if (!v) {
                rc = CY_ENOMEM;
                break;
            }
            out->v = v;
            cap = ncap;
        }
        cy_incident *inc = &out->v[out->n++];
        memset(inc, 0, sizeof(*inc));
        rc = read_row(st, inc);
        if (rc) break;
    }
    if (rc == 0 && s != SQLITE_DONE) rc = fail(d);
    done(st);
    /* Children after the cursor is done: their statements are others. */
    for (size_t i = 0; rc == 0 && i < out->n; i++)
        rc = read_children(d, &out->v[i]);
    if (rc) cy_incident_list_fini(out);
    return rc;
}

/* ---- incidents: writing (inside a transaction) ---- */

static int add_update(cy_statusdb *d, int64_t incident_id, int status, const char *body,
                      int64_t now_ms, int64_t *update_id)
{
    sqlite3_stmt *st = d->st[ST_UPD_ADD];
    sqlite3_bind_int64(st, 1, incident_id);
    bind_text(st, 2, status_names[status]);
    bind_text(st, 3, body);
    sqlite3_bind_int64(st, 4, now_ms);
    int rc = run(d, ST_UPD_ADD);
    if (rc == 0 && update_id) *update_id = sqlite3_last_insert_rowid(d->db);
    return rc;
}

static int set_incident(cy_statusdb *d, const cy_incident *inc)
{
    sqlite3_stmt *st = d->st[ST_INC_SET];
    sqlite3_bind_int64(st, 1, inc->id);
    bind_text(st, 2, status_names[inc->status]);
    bind_text(st, 3, impact_names[inc->impact]);
    sqlite3_bind_int64(st, 4, inc->updated_ms);
    sqlite3_bind_int64(st, 5, inc->monitoring_ms);
    sqlite3_bind_int64(st, 6, inc->resolved_ms);
    return run(d, ST_INC_SET);
}

/* The first line of s, at most 200 bytes, into out. */
static void first_line(const char *s, char *out, size_t len)
{
    size_t n = strcspn(s, "\r\n");
    if (n > 200) n = 200;
    if (n >= len) n = len - 1;
    memcpy(out, s, n);
    out[n] = '\0';
    utf8_cut(out);
}

/* The incident's timeline event: opened, an update, or resolved. */
static int incident_event(cy_statusdb *d, int kind, int64_t id, const char *component,
                          const char *name, int status, int impact, const char *body,
                          int64_t now_ms)
{
    char text[CY_STATUS_TEXT_MAX + 1], line[256];
    if (kind == CY_TL_INCIDENT_UPDATE) {
        first_line(body, line, sizeof(line));
        snprintf(text, sizeof(text), "incident #%lld %s: %s", (long long)id, status_names[status],
                 line);
    } else {
        snprintf(text, sizeof(text), "incident #%lld %s: %s", (long long)id,
                 kind == CY_TL_INCIDENT_OPENED ? "opened" : "resolved", name);
    }
    utf8_cut(text);
    char *details = details_of(json_pack("{s:I, s:s, s:s}", "incident_id", (json_int_t)id, "status",
                                         status_names[status], "impact", impact_names[impact]));
    if (!details) return CY_ENOMEM;
    int rc = tl_add(d, kind, component, text, details, now_ms, NULL);
    free(details);
    return rc;
}

/* Insert an incident and its first update; *id gets its id. */
static int insert_incident(cy_statusdb *d, const char *name, const char *components, int status,
                           int impact, const char *body, int64_t started_ms, int64_t now_ms,
                           int64_t *id)
{
    sqlite3_stmt *st = d->st[ST_INC_ADD];
    bind_text(st, 1, name);
    bind_text(st, 2, status_names[status]);
    bind_text(st, 3, impact_names[impact]);
    bind_text(st, 4, components);
    sqlite3_bind_int64(st, 5, started_ms);
    sqlite3_bind_int64(st, 6, now_ms);
    sqlite3_bind_int64(st, 7, status == CY_INCIDENT_MONITORING ? now_ms : 0);
    sqlite3_bind_int64(st, 8, status == CY_INCIDENT_RESOLVED ? now_ms : 0);
    int rc = run(d, ST_INC_ADD);
    if (rc) return rc;
    *id = sqlite3_last_insert_rowid(d->db);
    rc = add_update(d, *id, status, body, now_ms, NULL);
    if (rc == 0)
        rc = incident_event(d, CY_TL_INCIDENT_OPENED, *id, components, name, status, impact, body,
                            now_ms);
    if (rc == 0 && status == CY_INCIDENT_RESOLVED)
        rc = incident_event(d, CY_TL_INCIDENT_RESOLVED, *id, components, name, status, impact, body,
                            now_ms);
    return rc;
}

int cy_statusdb_incident_create(cy_statusdb *d, const char *name, const char *component, int status,
                                int impact, const char *body, int64_t now_ms, int64_t *id)
{
    int64_t tmp;
    if (!id) id = &tmp;
    *id = 0;
    if (!d || now_ms < 0) return CY_EINVAL;
    component = str(component);
    if (component[0] && !cy_status_id_valid(component)) return CY_EINVAL;
    if (status < 0 || status >= CY_INCIDENT_STATUSES || impact < 0 || impact >= CY_IMPACTS)
        return CY_EINVAL;
    if (!text_ok(name, 1, CY_STATUS_NAME_MAX, false) || !text_ok(body, 1, CY_STATUS_BODY_MAX, true))
        return CY_EINVAL;
    int rc = begin(d);
    if (rc) return rc;
    rc = finish(d, insert_incident(d, name, component, status, impact, body, now_ms, now_ms, id));
    if (rc) *id = 0;
    return rc;
}

/* Apply a new status to inc (read) at now_ms: resolve, reopen, monitoring. */
static void apply_status(cy_incident *inc, int status, int64_t now_ms)
{
    if (status == CY_INCIDENT_RESOLVED) {
        if (!inc->resolved_ms) inc->resolved_ms = now_ms;
    } else {
        inc->resolved_ms = 0; /* reopened, if it was resolved */
        if (status == CY_INCIDENT_MONITORING && !inc->monitoring_ms) inc->monitoring_ms = now_ms;
    }
    inc->status = status;
    inc->updated_ms = now_ms;
}

/* Inside a transaction: an update to inc (read), with its event. */
static int update_incident(cy_statusdb *d, cy_incident *inc, int status, const char *body,
                           int64_t now_ms, int64_t *update_id)
{
    bool was_resolved = inc->resolved_ms != 0;
    apply_status(inc, status, now_ms);
    int rc = set_incident(d, inc);
    if (rc == 0) rc = add_update(d, inc->id, status, body, now_ms, update_id);
    const char *comp = inc->ncomponents ? inc->components[0] : "";
    int kind = status == CY_INCIDENT_RESOLVED && !was_resolved ? CY_TL_INCIDENT_RESOLVED
                                                               : CY_TL_INCIDENT_UPDATE;
    if (rc == 0)
        rc = incident_event(d, kind, inc->id, comp, inc->name, status, inc->impact, body, now_ms);
    return rc;
}

int cy_statusdb_incident_update(cy_statusdb *d, int64_t id, int status, const char *body,
                                int64_t now_ms, int64_t *update_id)
{
    if (update_id) *update_id = 0;
    if (!d || now_ms < 0 || status < 0 || status >= CY_INCIDENT_STATUSES) return CY_EINVAL;
    if (!text_ok(body, 1, CY_STATUS_BODY_MAX, true)) return CY_EINVAL;
    if (id <= 0) return CY_ENOENT;
    int rc = begin(d);
    if (rc) return rc;
    cy_incident inc;
    rc = get(d, id, &inc);
    if (rc == 0) rc = update_incident(d, &inc, status, body, now_ms, update_id);
    cy_incident_fini(&inc);
    rc = finish(d, rc);
    if (rc && update_id) *update_id = 0;
    return rc;
}

/* ---- alerts ---- */

static bool alert_ok(const cy_status_alert *a, char comp[CY_STATUS_ID_MAX + 1], int *severity)
{
    static const char *const sev[] = {"info", "warning", "critical"};
    *severity = parse_word(a->severity, sev, 3);
    return *severity >= 0 && text_ok(a->fingerprint, 1, CY_STATUS_FP_MAX, false) &&
           text_ok(a->alertname, 1, CY_STATUS_ALERTNAME_MAX, false) &&
           text_ok(a->summary, 0, CY_STATUS_TEXT_MAX, false) &&
           text_ok(a->evidence, 0, CY_STATUS_EVIDENCE_MAX, true) &&
           cy_status_alert_component(a, comp) == 0;
}

/* Inside a transaction: the firing alert a opens or joins an incident. */
static int alert_incident(cy_statusdb *d, const cy_status_alert *a, const char *comp, int impact,
                          int64_t since, int64_t now_ms, int64_t *incident_id, int *action)
{
    char since_s[32];
    cy_status_rfc3339(since, since_s);
    const char *summary = str(a->summary), *evidence = str(a->evidence);
    size_t blen = strlen(summary) + strlen(evidence) + CY_STATUS_ALERTNAME_MAX + 160;
    char *body = cy_malloc(blen);
    if (!body) return CY_ENOMEM;
    int rc = 0;
    int64_t id = 0;
    sqlite3_stmt *st = d->st[ST_FIRING_JOINABLE];
    bind_text(st, 1, comp);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        id = sqlite3_column_int64(st, 0);
    } else if (s != SQLITE_DONE) {
        rc = fail(d);
    }
    done(st);
    if (rc) goto out;

    if (id == 0) {
        /* A new incident, named after the summary (or the alert). */
        char name[CY_STATUS_NAME_MAX + 1];
        snprintf(name, sizeof(name), "%s", summary[0] ? summary : str(a->alertname));
        utf8_cut(name);
        snprintf(body, blen, "%s (%s) has been firing since %s%s%s%s%s", a->alertname, a->severity,
                 since_s, summary[0] ? ": " : ".", summary, evidence[0] ? "\nEvidence: " : "",
                 evidence);
        rc = insert_incident(d, name, comp, CY_INCIDENT_INVESTIGATING, impact, body, since, now_ms,
                             &id);
        *action = CY_ALERT_ACT_OPENED;
    } else {
        cy_incident inc;
        rc = get(d, id, &inc);
        if (rc == 0) {
            if (impact > inc.impact) inc.impact = impact;
            snprintf(body, blen, "Also firing since %s: %s (%s)%s%s%s%s", since_s, a->alertname,
                     a->severity, summary[0] ? ": " : ".", summary,
                     evidence[0] ? "\nEvidence: " : "", evidence);
            rc = update_incident(d, &inc, inc.status, body, now_ms, NULL);
        }
        cy_incident_fini(&inc);
        *action = CY_ALERT_ACT_JOINED;
    }
    if (rc) goto out;
    st = d->st[ST_IA_ADD];
    sqlite3_bind_int64(st, 1, id);
    bind_text(st, 2, a->fingerprint);
    bind_text(st, 3, a->alertname);
    sqlite3_bind_int64(st, 4, since);
    rc = run(d, ST_IA_ADD);
    if (rc) goto out;
    st = d->st[ST_FIRING_SET_INCIDENT];
    bind_text(st, 1, a->fingerprint);
    sqlite3_bind_int64(st, 2, id);
    rc = run(d, ST_FIRING_SET_INCIDENT);
    *incident_id = id;
out:
    cy_free(body);
    return rc;
}

int cy_statusdb_alert_fired(cy_statusdb *d, const cy_status_alert *a, int64_t now_ms,
                            int64_t *incident_id, int *action)
{
    int64_t id_tmp;
    int act_tmp;
    if (!incident_id) incident_id = &id_tmp;
    if (!action) action = &act_tmp;
    *incident_id = 0;
    *action = CY_ALERT_ACT_NOTHING;
    char comp[CY_STATUS_ID_MAX + 1];
    int severity;
    if (!d || !a || now_ms < 0 || !alert_ok(a, comp, &severity)) return CY_EINVAL;
    int64_t since = a->since_ms > 0 && a->since_ms <= now_ms ? a->since_ms : now_ms;
    int rc = begin(d);
    if (rc) return rc;
    /* Already firing: nothing to do (the caller restarted, or called twice). */
    sqlite3_stmt *st = d->st[ST_FIRING_GET];
    bind_text(st, 1, a->fingerprint);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) *incident_id = sqlite3_column_int64(st, 4);
    if (s != SQLITE_ROW && s != SQLITE_DONE) rc = fail(d);
    done(st);
    if (rc || s == SQLITE_ROW) return finish(d, rc);

    st = d->st[ST_FIRING_ADD];
    bind_text(st, 1, a->fingerprint);
    bind_text(st, 2, a->alertname);
    bind_text(st, 3, a->severity);
    bind_text(st, 4, comp);
    sqlite3_bind_int64(st, 5, since);
    sqlite3_bind_int64(st, 6, 0);
    rc = run(d, ST_FIRING_ADD);
    char text[CY_STATUS_TEXT_MAX + 1], since_s[32];
    cy_status_rfc3339(since, since_s);
    if (rc == 0) {
        snprintf(text, sizeof(text), "%s firing (%s)%s%s", a->alertname, a->severity,
                 str(a->summary)[0] ? ": " : "", str(a->summary));
        utf8_cut(text);
        char *details =
            details_of(json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "alertname", a->alertname,
                                 "severity", a->severity, "fingerprint", a->fingerprint, "summary",
                                 str(a->summary), "evidence", str(a->evidence), "since", since_s));
        rc = details ? tl_add(d, CY_TL_ALERT_FIRING, comp, text, details, since, NULL) : CY_ENOMEM;
        free(details);
    }
    /* severity: 0 info (timeline only), 1 warning (minor), 2 critical (major) */
    if (rc == 0 && severity > 0)
        rc = alert_incident(d, a, comp, severity == 2 ? CY_IMPACT_MAJOR : CY_IMPACT_MINOR, since,
                            now_ms, incident_id, action);
    rc = finish(d, rc);
    if (rc) {
        *incident_id = 0;
        *action = CY_ALERT_ACT_NOTHING;
    }
    return rc;
}

/* Inside a transaction: the firing alert fingerprint resolves at now_ms. */
static int resolve_one(cy_statusdb *d, const char *fingerprint, int64_t now_ms,
                       int64_t *incident_id, int *action)
{
    char alertname[CY_STATUS_ALERTNAME_MAX + 1], comp[CY_STATUS_ID_MAX + 1];
    sqlite3_stmt *st = d->st[ST_FIRING_GET];
    bind_text(st, 1, fingerprint);
    int s = sqlite3_step(st), rc = 0;
    int64_t since = 0, id = 0;
    if (s == SQLITE_ROW) {
        col_copy(st, 0, alertname, sizeof(alertname));
        col_copy(st, 2, comp, sizeof(comp));
        since = sqlite3_column_int64(st, 3);
        id = sqlite3_column_int64(st, 4);
    } else if (s != SQLITE_DONE) {
        rc = fail(d);
    }
    done(st);
    if (rc || s == SQLITE_DONE) return rc; /* not firing: nothing */

    st = d->st[ST_FIRING_DEL];
    bind_text(st, 1, fingerprint);
    rc = run(d, ST_FIRING_DEL);
    if (rc) return rc;
    char dur[32], at[32], text[CY_STATUS_TEXT_MAX + 1];
    cy_status_duration(now_ms - since, dur);
    cy_status_rfc3339(now_ms, at);
    snprintf(text, sizeof(text), "%s resolved after %s", alertname, dur);
    char *details = details_of(
        json_pack("{s:s, s:s, s:I, s:I}", "alertname", alertname, "fingerprint", fingerprint,
                  "duration_ms", (json_int_t)(now_ms - since), "incident_id", (json_int_t)id));
    rc = details ? tl_add(d, CY_TL_ALERT_RESOLVED, comp, text, details, now_ms, NULL) : CY_ENOMEM;
    free(details);
    if (rc || id == 0) return rc;

    *incident_id = id;
    st = d->st[ST_IA_CLEAR];
    sqlite3_bind_int64(st, 1, id);
    bind_text(st, 2, fingerprint);
    sqlite3_bind_int64(st, 3, now_ms);
    rc = run(d, ST_IA_CLEAR);
    if (rc) return rc;
    cy_incident inc;
    rc = get(d, id, &inc);
    if (rc == CY_ENOENT) return 0; /* trimmed meanwhile */
    if (rc) return rc;
    *action = CY_ALERT_ACT_CLEARED;
    if (inc.resolved_ms == 0) {
        int64_t still = 0;
        st = d->st[ST_FIRING_COUNT];
        sqlite3_bind_int64(st, 1, id);
        s = sqlite3_step(st);
        if (s == SQLITE_ROW)
            still = sqlite3_column_int64(st, 0);
        else
            rc = fail(d);
        done(st);
        char body[CY_STATUS_ALERTNAME_MAX + 256];
        if (rc == 0 && still == 0) {
            char lasted[32], started[32];
            cy_status_duration(now_ms - inc.started_ms, lasted);
            cy_status_rfc3339(inc.started_ms, started);
            snprintf(body, sizeof(body),
                     "%s cleared at %s after %s. Resolved automatically: no alert of this"
                     " incident is firing. It lasted %s (since %s).",
                     alertname, at, dur, lasted, started);
            rc = update_incident(d, &inc, CY_INCIDENT_RESOLVED, body, now_ms, NULL);
            *action = CY_ALERT_ACT_RESOLVED;
        } else if (rc == 0) {
            snprintf(body, sizeof(body), "%s cleared at %s after %s; %lld alert%s still firing.",
                     alertname, at, dur, (long long)still, still == 1 ? "" : "s");
            rc = update_incident(d, &inc, inc.status, body, now_ms, NULL);
        }
    }
    cy_incident_fini(&inc);
    return rc;
}

int cy_statusdb_alert_resolved(cy_statusdb *d, const cy_status_alert *a, int64_t now_ms,
                               int64_t *incident_id, int *action)
{
    int64_t id_tmp;
    int act_tmp;
    if (!incident_id) incident_id = &id_tmp;
    if (!action) action = &act_tmp;
    *incident_id = 0;
    *action = CY_ALERT_ACT_NOTHING;
    if (!d || !a || now_ms < 0 || !text_ok(a->fingerprint, 1, CY_STATUS_FP_MAX, false))
        return CY_EINVAL;
    int rc = begin(d);
    if (rc) return rc;
    rc = finish(d, resolve_one(d, a->fingerprint, now_ms, incident_id, action));
    if (rc) {
        *incident_id = 0;
        *action = CY_ALERT_ACT_NOTHING;
    }
    return rc;
}

int cy_statusdb_alert_reconcile(cy_statusdb *d, const cy_status_alert *firing, size_t n,
                                int64_t now_ms, size_t *resolved)
{
    if (resolved) *resolved = 0;
    if (!d || (n && !firing) || now_ms < 0) return CY_EINVAL;
    d->err[0] = '\0';
    /* The firing set first (a cursor must not stay open across writes). */
    char **fps = NULL;
    size_t nfp = 0, cap = 0;
    int rc = 0, s;
    sqlite3_stmt *st = d->st[ST_FIRING_ALL];
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (nfp == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **v = cy_realloc(fps, ncap * sizeof(*v));
            if (!v) {
                rc = CY_ENOMEM;
                break;
            }
            fps = v;
            cap = ncap;
        }
        if (!(fps[nfp] = col_dup(st, 0))) {
            rc = CY_ENOMEM;
            break;
        }
        nfp++;
    }
    if (rc == 0 && s != SQLITE_DONE) rc = fail(d);
    done(st);
    for (size_t i = 0; rc == 0 && i < nfp; i++) {
        bool still = false;
        for (size_t k = 0; k < n && !still; k++)
            still = firing[k].fingerprint && !strcmp(firing[k].fingerprint, fps[i]);
        if (still) continue;
        int64_t id;
        int action = CY_ALERT_ACT_NOTHING;
        rc = begin(d);
        if (rc == 0) rc = finish(d, resolve_one(d, fps[i], now_ms, &id, &action));
        if (rc == 0 && resolved) (*resolved)++;
    }
    for (size_t i = 0; i < nfp; i++)
        cy_free(fps[i]);
    cy_free(fps);
    return rc;
}
