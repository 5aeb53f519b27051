/* Tests of cy_store (src/store/store.c): every write function round-trips
 * through cy_store_load, load order and early stop, group commit (pending,
 * close commits, a second connection sees only committed data), crash
 * durability (a forked child commits, writes more, and dies without
 * closing: the committed batch is there, the rest is not), error paths
 * (bad files, a newer schema, a held write lock, allocation failures), the
 * cross-shard outbox and peer state, and the migration of a version 1 file.
 *
 * Loads are recorded as one line per callback into a text log, so a test
 * states the whole expected load, order included, in one string.
 */
#include "store_testlib.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "store/store.h"

#include <dirent.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- fixture: a fresh temp dir per test ---- */

typedef struct fixture {
    char dir[64];
    char path[128];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (!f) return -1;
    strcpy(f->dir, "/tmp/cyan-store-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/broker.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char mnt[96];
    snprintf(mnt, sizeof(mnt), "%s/mnt", f->dir);
    umount2(mnt, MNT_DETACH); /* a test that mounted there and failed (else: nothing there) */
    rmdir(mnt);
    cyt_dir_remove(f->dir);
    free(f);
    cy_alloc_fail_after(-1);
    return 0;
}

static cy_store *open_store(fixture *f)
{
    cy_store *s = NULL;
    assert_int_equal(cy_store_open(f->path, false, &s), 0);
    assert_non_null(s);
    return s;
}

/* ---- the load recorder ---- */

/* rec, out, out_bytes and next: store_testlib.h */

static int on_session(void *ctx, const cy_store_session *s)
{
    rec *r = ctx;
    out(r, "S %s v%u e%u d%lld\n", s->client_id, s->version, s->expiry,
        (long long)s->disconnected_at);
    return next(r);
}

static int on_sub(void *ctx, const char *client_id, const char *filter, uint8_t opts,
                  uint32_t sub_id)
{
    rec *r = ctx;
    out(r, "B %s %s o%u i%u\n", client_id, filter, opts, sub_id);
    return next(r);
}

static void out_msg(rec *r, const cy_store_msg *m)
{
    assert_non_null(m->topic);
    assert_non_null(m->payload); /* even when empty */
    assert_true((m->props == NULL) == (m->props_len == 0));
    out(r, "t=");
    out_bytes(r, m->topic, m->topic_len);
    out(r, "/%zu p=", m->topic_len);
    out_bytes(r, m->payload, m->payload_len);
    out(r, "/%zu", m->payload_len);
    if (m->props) {
        out(r, " pr=");
        out_bytes(r, m->props, m->props_len);
    }
    out(r, " q%u r%d x%lld", m->qos, m->retain, (long long)m->expiry_at);
}

static int on_msg(void *ctx, const char *client_id, const cy_store_msg *m)
{
    rec *r = ctx;
    out(r, "M %s #%lld ", client_id, (long long)m->id);
    out_msg(r, m);
    out(r, " pid%u st%u ids[", m->packet_id, m->state);
    for (uint32_t i = 0; i < m->n_sub_ids; i++)
        out(r, i ? ",%u" : "%u", m->sub_ids[i]);
    out(r, "]\n");
    return next(r);
}

static int on_inq2(void *ctx, const char *client_id, uint16_t packet_id)
{
    rec *r = ctx;
    out(r, "Q %s %u\n", client_id, packet_id);
    return next(r);
}

static int on_retained(void *ctx, const cy_store_msg *m)
{
    rec *r = ctx;
    out(r, "R ");
    out_msg(r, m);
    out(r, " ts%lld", (long long)m->ts);
    if (m->owner) {
        out(r, " ow=");
        out_bytes(r, m->owner, m->owner_len);
    }
    out(r, "\n");
    return next(r);
}

static int on_peer(void *ctx, unsigned peer, uint64_t last_sent, uint64_t last_applied)
{
    rec *r = ctx;
    out(r, "P %u s%llu a%llu\n", peer, (unsigned long long)last_sent,
        (unsigned long long)last_applied);
    return next(r);
}

static int on_outbox(void *ctx, unsigned peer, uint64_t seq, const uint8_t *frame, size_t len)
{
    rec *r = ctx;
    assert_non_null(frame); /* even when empty */
    out(r, "O %u #%llu ", peer, (unsigned long long)seq);
    out_bytes(r, frame, len);
    out(r, "/%zu\n", len);
    return next(r);
}

static const cy_store_loader all = {.session = on_session,
                                    .sub = on_sub,
                                    .msg = on_msg,
                                    .inq2 = on_inq2,
                                    .retained = on_retained,
                                    .peer = on_peer,
                                    .outbox = on_outbox};

/* Loads s into a fresh recording and returns its log (static storage). */
static const char *load(cy_store *s)
{
    static rec r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(cy_store_load(s, &all, &r), 0);
    return r.log;
}

/* Reopens the file and loads it, so the test sees only what is on disk. */
static const char *load_fresh(fixture *f)
{
    cy_store *s = open_store(f);
    const char *log = load(s);
    cy_store_close(s);
    return log;
}

static void put_session(cy_store *s, const char *id, uint8_t version, uint32_t expiry,
                        int64_t disconnected_at)
{
    cy_store_session sess = {id, version, expiry, disconnected_at};
    assert_int_equal(cy_store_session_put(s, &sess), 0);
}

static int64_t put_msg(cy_store *s, const char *client_id, const char *topic, const char *payload)
{
    cy_store_msg m = {.topic = topic,
                      .topic_len = strlen(topic),
                      .payload = (const uint8_t *)payload,
                      .payload_len = strlen(payload),
                      .qos = 1};
    assert_int_equal(cy_store_msg_put(s, client_id, &m), 0);
    return m.id;
}

/* Runs sql on the file through a plain connection of the test's own. */
#define sql_exec(f, sql) cyt_sql_exec((f)->path, (sql))
#define sql_int(f, sql) cyt_sql_int((f)->path, (sql))

static int user_version(fixture *f)
{
    return (int)sql_int(f, "PRAGMA user_version");
}

/* ---- open / close ---- */

static void test_cy_store_open_creates_wal_schema(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    assert_string_equal(load(s), "");
    cy_store_close(s);

    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);
    assert_int_equal(user_version(f), 6);
    assert_int_equal(sql_int(f, "PRAGMA auto_vacuum"), 2); /* incremental */

    /* Reopening an existing file works, also with sync_full. */
    assert_int_equal(cy_store_open(f->path, true, &s), 0);
    cy_store_close(s);
}

static void test_cy_store_open_missing_dir(void **state)
{
    fixture *f = *state;
    char p[256];
    snprintf(p, sizeof(p), "%s/no/such/dir/broker.db", f->dir);
    cy_store *s = (cy_store *)1;
    assert_int_equal(cy_store_open(p, false, &s), CY_ESTORE);
    assert_null(s);
}

static void test_cy_store_open_not_a_database(void **state)
{
    fixture *f = *state;
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    for (int i = 0; i < 200; i++)
        fputs("this is not an SQLite database, only text. ", fp);
    fclose(fp);
    cy_store *s = NULL;
    assert_int_equal(cy_store_open(f->path, false, &s), CY_ESTORE);
    assert_null(s);
}

static void test_cy_store_open_newer_schema(void **state)
{
    fixture *f = *state;
    sql_exec(f, "PRAGMA user_version = 7");
    cy_store *s = NULL;
    assert_int_equal(cy_store_open(f->path, false, &s), CY_ESTORE);
    assert_null(s);
    assert_int_equal(user_version(f), 7); /* untouched */
}

static void test_cy_store_open_einval(void **state)
{
    cy_store *s;
    assert_int_equal(cy_store_open(NULL, false, &s), CY_EINVAL);
    assert_int_equal(cy_store_open("x", false, NULL), CY_EINVAL);
}

static void test_cy_store_open_alloc_fail(void **state)
{
    fixture *f = *state;
    /* Walk every cy_alloc failure point of open until it succeeds. */
    for (long n = 0;; n++) {
        cy_store *s = NULL;
        cy_alloc_fail_after(n);
        int rc = cy_store_open(f->path, false, &s);
        cy_alloc_fail_after(-1);
        if (rc == 0) {
            assert_true(n > 0);
            cy_store_close(s);
            break;
        }
        assert_int_equal(rc, CY_ENOMEM);
        assert_null(s);
    }
}

static void test_cy_store_close_null(void **state)
{
    cy_store_close(NULL);
}

/* ---- sessions ---- */

static void test_cy_store_session_put_round_trip(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "dev-b", 5, 0xFFFFFFFFu, 0);
    put_session(s, "dev-a", 4, 300, 1700000000123);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "S dev-a v4 e300 d1700000000123\n"
                                       "S dev-b v5 e4294967295 d0\n");
}

static void test_cy_store_session_put_upsert(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "dev", 4, 10, 0);
    cy_store_sub_put(s, "dev", "a/#", 3, 1, 0);
    put_session(s, "dev", 5, 20, 99);
    /* The upsert updates in place: it does not drop the session's rows. */
    assert_string_equal(load(s), "S dev v5 e20 d99\n"
                                 "B dev a/# o1 i0\n");
    cy_store_close(s);
}

static void test_cy_store_session_put_einval(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    cy_store_session sess = {0};
    assert_int_equal(cy_store_session_put(s, NULL), CY_EINVAL);
    assert_int_equal(cy_store_session_put(s, &sess), CY_EINVAL);
    assert_int_equal(cy_store_session_delete(s, NULL), CY_EINVAL);
    assert_int_equal(cy_store_pending(s), 0);
    cy_store_close(s);
}

static void test_cy_store_session_delete_cascades(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    const char *ids[] = {"keep", "gone"};
    int64_t msg[2];
    for (int i = 0; i < 2; i++) {
        put_session(s, ids[i], 5, 60, 0);
        assert_int_equal(cy_store_sub_put(s, ids[i], "x/+", 3, 2, 7), 0);
        msg[i] = put_msg(s, ids[i], "x/y", "hello");
        assert_int_equal(cy_store_inq2_put(s, ids[i], 11), 0);
    }
    /* The session's messages are its holder's to delete, by id. */
    assert_int_equal(cy_store_session_delete(s, "gone"), 0);
    assert_int_equal(cy_store_msg_delete(s, msg[1]), 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);

    assert_string_equal(load_fresh(f), "S keep v5 e60 d0\n"
                                       "B keep x/+ o2 i7\n"
                                       "Q keep 11\n"
                                       "M keep #1 t=x/y/3 p=hello/5 q1 r0 x0 pid0 st0 ids[]\n");
    /* Nothing of "gone" survives, not even rows without a session. */
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT (SELECT count(*) FROM subs WHERE client_id='gone')"
                                        " + (SELECT count(*) FROM msgs WHERE client_id='gone')"
                                        " + (SELECT count(*) FROM inq2 WHERE client_id='gone')",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    sqlite3_close(db);

    /* Deleting a session that does not exist is not an error. */
    s = open_store(f);
    assert_int_equal(cy_store_session_delete(s, "never"), 0);
    cy_store_close(s);
}

/* A message row its holder did not delete with its session is not
 * reported, and the load deletes it (in the batch it leaves pending). */
static void test_cy_store_load_deletes_orphan_msgs(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "keep", 5, 60, 0);
    put_session(s, "gone", 5, 60, 0);
    put_msg(s, "gone", "x/y", "left");
    put_msg(s, "keep", "x/y", "kept");
    assert_int_equal(cy_store_session_delete(s, "gone"), 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_int_equal(sql_int(f, "SELECT count(*) FROM msgs"), 2);

    s = open_store(f);
    assert_string_equal(load(s), "S keep v5 e60 d0\n"
                                 "M keep #2 t=x/y/3 p=kept/4 q1 r0 x0 pid0 st0 ids[]\n");
    assert_true(cy_store_pending(s) > 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_int_equal(sql_int(f, "SELECT count(*) FROM msgs"), 1);

    /* Without orphans the load writes nothing. */
    s = open_store(f);
    load(s);
    assert_int_equal(cy_store_pending(s), 0);
    cy_store_close(s);
}

/* ---- subscriptions ---- */

static void test_cy_store_sub_put_upsert(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "c", 5, 0, 0);
    assert_int_equal(cy_store_sub_put(s, "c", "a/b", 3, 1, 0), 0);
    assert_int_equal(cy_store_sub_put(s, "c", "a/bXXX", 3, 0, 0), 0); /* length, not strlen */
    assert_int_equal(cy_store_sub_put(s, "c", "$share/g/t", 10, 2, 268435455), 0);
    assert_int_equal(cy_store_sub_put(s, "c", "a/b", 3, 0x2e, 9), 0); /* replaces */
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    const char *log = load_fresh(f);
    /* Order of subscriptions within a session is unspecified. */
    assert_non_null(strstr(log, "B c a/b o46 i9\n"));
    assert_non_null(strstr(log, "B c $share/g/t o2 i268435455\n"));
    assert_int_equal(strlen(log), strlen("S c v5 e0 d0\n"
                                         "B c a/b o46 i9\n"
                                         "B c $share/g/t o2 i268435455\n"));
}

static void test_cy_store_sub_delete(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "c", 5, 0, 0);
    put_session(s, "d", 5, 0, 0);
    assert_int_equal(cy_store_sub_put(s, "c", "a", 1, 0, 0), 0);
    assert_int_equal(cy_store_sub_put(s, "d", "a", 1, 1, 0), 0);
    assert_int_equal(cy_store_sub_delete(s, "c", "aXX", 1), 0);
    assert_int_equal(cy_store_sub_delete(s, "c", "a", 1), 0); /* absent: fine */
    assert_int_equal(cy_store_sub_put(s, NULL, "a", 1, 0, 0), CY_EINVAL);
    assert_int_equal(cy_store_sub_delete(s, "c", NULL, 1), CY_EINVAL);
    assert_string_equal(load(s), "S c v5 e0 d0\n"
                                 "S d v5 e0 d0\n"
                                 "B d a o1 i0\n");
    cy_store_close(s);
}

/* ---- messages ---- */

static void test_cy_store_msg_put_all_fields(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "c", 5, 0, 0);

    static const uint8_t bin[] = {0, 1, 0, 0xff, 'z'};
    static const uint8_t props[] = {0x01, 0x01, 0x23, 0x00, 0x02};
    static const uint32_t ids[] = {1, 0x0fffffff, 0x12345678};
    cy_store_msg m1 = {.topic = "bin/\xc3\xa9t\xc3\xa9",
                       .topic_len = 9,
                       .payload = bin,
                       .payload_len = sizeof(bin),
                       .props = props,
                       .props_len = sizeof(props),
                       .qos = 2,
                       .retain = true,
                       .expiry_at = 1800000000000,
                       .packet_id = 65535,
                       .state = CY_MSG_SENT,
                       .sub_ids = ids,
                       .n_sub_ids = 3};
    cy_store_msg m2 = {.topic = "e/nullXX", .topic_len = 6, .qos = 0}; /* empty, NULL payload */
    cy_store_msg m3 = {.topic = "e/zero", .topic_len = 6, .payload = bin, .payload_len = 0};
    assert_int_equal(cy_store_msg_put(s, "c", &m1), 0);
    assert_int_equal(cy_store_msg_put(s, "c", &m2), 0);
    assert_int_equal(cy_store_msg_put(s, "c", &m3), 0);
    assert_true(m1.id > 0 && m2.id > m1.id && m3.id > m2.id);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);

    assert_string_equal(load_fresh(f),
                        "S c v5 e0 d0\n"
                        "M c #1 t=bin/\\xc3\\xa9t\\xc3\\xa9/9 p=\\x00\\x01\\x00\\xffz/5"
                        " pr=\\x01\\x01#\\x00\\x02 q2 r1 x1800000000000 pid65535 st1"
                        " ids[1,268435455,305419896]\n"
                        "M c #2 t=e/null/6 p=/0 q0 r0 x0 pid0 st0 ids[]\n"
                        "M c #3 t=e/zero/6 p=/0 q0 r0 x0 pid0 st0 ids[]\n");
}

static void test_cy_store_msg_put_many_sub_ids(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "c", 5, 0, 0);
    uint32_t ids[40]; /* more than fit the stack buffer */
    for (uint32_t i = 0; i < 40; i++)
        ids[i] = i + 1;
    cy_store_msg m = {.topic = "t", .topic_len = 1, .sub_ids = ids, .n_sub_ids = 40};
    cy_alloc_fail_after(0);
    assert_int_equal(cy_store_msg_put(s, "c", &m), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    assert_int_equal(cy_store_pending(s), 1); /* only the session */
    assert_int_equal(cy_store_msg_put(s, "c", &m), 0);
    const char *log = load(s);
    assert_non_null(strstr(log, "ids[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,"
                                "23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40]\n"));
    cy_store_close(s);
}

static void test_cy_store_msg_put_order(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "a", 5, 0, 0);
    put_session(s, "b", 5, 0, 0);
    /* Interleaved queues: each loads in its own enqueue order. */
    put_msg(s, "b", "t", "b1");
    put_msg(s, "a", "t", "a1");
    put_msg(s, "b", "t", "b2");
    int64_t a2 = put_msg(s, "a", "t", "a2");
    put_msg(s, "a", "t", "a3");
    assert_int_equal(cy_store_msg_delete(s, a2), 0);
    int64_t a4 = put_msg(s, "a", "t", "a4");
    assert_true(a4 > a2);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "S a v5 e0 d0\n"
                                       "S b v5 e0 d0\n"
                                       "M b #1 t=t/1 p=b1/2 q1 r0 x0 pid0 st0 ids[]\n"
                                       "M a #2 t=t/1 p=a1/2 q1 r0 x0 pid0 st0 ids[]\n"
                                       "M b #3 t=t/1 p=b2/2 q1 r0 x0 pid0 st0 ids[]\n"
                                       "M a #5 t=t/1 p=a3/2 q1 r0 x0 pid0 st0 ids[]\n"
                                       "M a #6 t=t/1 p=a4/2 q1 r0 x0 pid0 st0 ids[]\n");
}

static void test_cy_store_msg_update(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "c", 5, 0, 0);
    int64_t id1 = put_msg(s, "c", "t", "one");
    int64_t id2 = put_msg(s, "c", "t", "two");
    assert_int_equal(cy_store_msg_update(s, id1, 7, CY_MSG_SENT), 0);
    assert_int_equal(cy_store_msg_update(s, id2, 8, CY_MSG_SENT), 0);
    assert_int_equal(cy_store_msg_update(s, id2, 8, CY_MSG_RELEASED), 0);
    assert_int_equal(cy_store_msg_update(s, 999, 1, CY_MSG_SENT), CY_ENOENT);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "S c v5 e0 d0\n"
                                       "M c #1 t=t/1 p=one/3 q1 r0 x0 pid7 st1 ids[]\n"
                                       "M c #2 t=t/1 p=two/3 q1 r0 x0 pid8 st2 ids[]\n");
}

static void test_cy_store_msg_delete(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "c", 5, 0, 0);
    int64_t id1 = put_msg(s, "c", "t", "one");
    put_msg(s, "c", "t", "two");
    assert_int_equal(cy_store_msg_delete(s, id1), 0);
    assert_int_equal(cy_store_msg_delete(s, id1), 0); /* absent: fine */
    assert_string_equal(load(s), "S c v5 e0 d0\n"
                                 "M c #2 t=t/1 p=two/3 q1 r0 x0 pid0 st0 ids[]\n");
    cy_store_close(s);
}

static void test_cy_store_msg_put_einval(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    cy_store_msg m = {.topic = NULL, .topic_len = 3};
    assert_int_equal(cy_store_msg_put(s, "c", &m), CY_EINVAL);
    m = (cy_store_msg){.topic = "t", .topic_len = 1, .payload_len = 4};
    assert_int_equal(cy_store_msg_put(s, "c", &m), CY_EINVAL);
    m = (cy_store_msg){.topic = "t", .topic_len = 1, .n_sub_ids = 1};
    assert_int_equal(cy_store_msg_put(s, "c", &m), CY_EINVAL);
    assert_int_equal(cy_store_msg_put(s, NULL, &m), CY_EINVAL);
    assert_int_equal(cy_store_msg_put(s, "c", NULL), CY_EINVAL);
    assert_int_equal(cy_store_pending(s), 0);
    cy_store_close(s);
}

/* ---- inbound QoS 2 ids ---- */

static void test_cy_store_inq2_put_delete(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "c", 5, 0, 0);
    assert_int_equal(cy_store_inq2_put(s, "c", 65535), 0);
    assert_int_equal(cy_store_inq2_put(s, "c", 3), 0);
    assert_int_equal(cy_store_inq2_put(s, "c", 3), 0); /* duplicate ignored */
    assert_int_equal(cy_store_inq2_put(s, "c", 1), 0);
    assert_int_equal(cy_store_inq2_delete(s, "c", 1), 0);
    assert_int_equal(cy_store_inq2_delete(s, "c", 2), 0); /* absent: fine */
    assert_int_equal(cy_store_inq2_put(s, NULL, 2), CY_EINVAL);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "S c v5 e0 d0\n"
                                       "Q c 3\n"
                                       "Q c 65535\n");
}

/* ---- retained ---- */

static void test_cy_store_retain_put_replace_delete(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    static const uint8_t props[] = {0x03, 0x00, 0x01, 'j'};
    cy_store_msg m = {.topic = "r/1XX",
                      .topic_len = 3,
                      .payload = (const uint8_t *)"v1",
                      .payload_len = 2,
                      .props = props,
                      .props_len = sizeof(props),
                      .qos = 1,
                      .expiry_at = 5};
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    m.payload = (const uint8_t *)"v\0002";
    m.payload_len = 3;
    m.props = NULL;
    m.props_len = 0;
    m.qos = 2;
    m.expiry_at = 0;
    assert_int_equal(cy_store_retain_put(s, &m), 0); /* replaces */
    cy_store_msg e = {.topic = "r/empty", .topic_len = 7};
    assert_int_equal(cy_store_retain_put(s, &e), 0);
    cy_store_msg g = {
        .topic = "r/gone", .topic_len = 6, .payload = (const uint8_t *)"x", .payload_len = 1};
    assert_int_equal(cy_store_retain_put(s, &g), 0);
    assert_int_equal(cy_store_retain_delete(s, "r/goneXX", 6), 0);
    assert_int_equal(cy_store_retain_delete(s, "r/none", 6), 0); /* absent: fine */
    assert_int_equal(cy_store_retain_delete(s, NULL, 6), CY_EINVAL);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    const char *log = load_fresh(f);
    assert_non_null(strstr(log, "R t=r/1/3 p=v\\x002/3 q2 r1 x0 ts0\n"));
    assert_non_null(strstr(log, "R t=r/empty/7 p=/0 q0 r1 x0 ts0\n"));
    assert_int_equal(strlen(log), strlen("R t=r/1/3 p=v\\x002/3 q2 r1 x0 ts0\n"
                                         "R t=r/empty/7 p=/0 q0 r1 x0 ts0\n"));
}

static void test_cy_store_retain_put_owner(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    cy_store_msg m = {.topic = "o/1", .topic_len = 3, .owner = "dev-aXX", .owner_len = 5};
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    m.topic = "o/2";
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    /* replaced by a replica: nobody's */
    m.owner = NULL;
    m.owner_len = 0;
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    m.owner_len = 3; /* a length without bytes */
    assert_int_equal(cy_store_retain_put(s, &m), CY_EINVAL);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "R t=o/1/3 p=/0 q0 r1 x0 ts0 ow=dev-a\n"
                                       "R t=o/2/3 p=/0 q0 r1 x0 ts0\n");
}

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* Cleared retained messages give their space back: the file shrinks to
 * about what is still held, in slices of at most max_pages pages, and only
 * between batches. */
static void test_cy_store_reclaim_shrinks_file(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    enum { N = 40, SIZE = 256 * 1024 };
    uint8_t *big = malloc(SIZE);
    assert_non_null(big);
    for (size_t i = 0; i < SIZE; i++)
        big[i] = (uint8_t)(i * 31 + 7);
    char topic[32];
    for (int i = 0; i < N; i++) {
        int n = snprintf(topic, sizeof(topic), "big/%d", i);
        cy_store_msg m = {.topic = topic,
                          .topic_len = (size_t)n,
                          .payload = big,
                          .payload_len = SIZE,
                          .owner = "d",
                          .owner_len = 1};
        assert_int_equal(cy_store_retain_put(s, &m), 0);
        assert_int_equal(cy_store_commit(s), 0);
    }
    cy_store_msg keep = {.topic = "keep", .topic_len = 4, .payload = big, .payload_len = 100};
    assert_int_equal(cy_store_retain_put(s, &keep), 0);
    assert_int_equal(cy_store_commit(s), 0);
    assert_int_equal(cy_store_reclaim(s, 1000), 0); /* nothing free yet */
    for (int i = 0; i < N; i++) {
        int n = snprintf(topic, sizeof(topic), "big/%d", i);
        assert_int_equal(cy_store_retain_delete(s, topic, (size_t)n), 0);
    }
    /* a batch is open: nothing is done */
    assert_int_equal(cy_store_reclaim(s, 1000), 0);
    assert_int_equal(cy_store_commit(s), 0);
    long long full = file_size(f->path);
    assert_true(full > 8 * 1024 * 1024); /* the 10 MB deleted are still in the file */
    int left = cy_store_reclaim(s, 64);
    assert_true(left > 64 * 10); /* ~2,500 free pages, 64 given back */
    int calls = 1;
    while (left > 0 && calls < 10000) {
        int before = left;
        left = cy_store_reclaim(s, 64);
        assert_true(left >= 0);
        assert_true(left == before - 64 || (before < 64 && left == 0)); /* 64 pages a call */
        calls++;
    }
    assert_int_equal(left, 0);
    assert_int_equal(cy_store_reclaim(s, 64), 0); /* nothing more to do */
    long long after = file_size(f->path);
    assert_true(after < 1024 * 1024);
    cy_store_close(s);
    const char *log = load_fresh(f);
    assert_non_null(strstr(log, "R t=keep/4 p="));
    assert_non_null(strstr(log, "/100 q0 r1 x0 ts0\n"));
    assert_null(strstr(log, "big/"));
    free(big);
}

static void test_cy_store_retain_put_props(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    static const uint8_t props[] = {0x03, 0x00, 0x01, 'j'};
    cy_store_msg m = {.topic = "p", .topic_len = 1, .props = props, .props_len = sizeof(props)};
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    assert_string_equal(load(s), "R t=p/1 p=/0 pr=\\x03\\x00\\x01j q0 r1 x0 ts0\n");
    cy_store_close(s);
}

static void test_cy_store_retain_put_ts(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    cy_store_msg m = {.topic = "a", .topic_len = 1, .ts = (1700000000123LL << 8) | 3};
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    m = (cy_store_msg){.topic = "max", .topic_len = 3, .ts = INT64_MAX};
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    m = (cy_store_msg){.topic = "min", .topic_len = 3, .ts = INT64_MIN};
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    /* The store keeps what it is given: last-writer-wins is the caller's
     * rule, so an older stamp replaces a newer one here. */
    m = (cy_store_msg){.topic = "b", .topic_len = 1, .ts = 900};
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    m.ts = 5;
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    const char *log = load_fresh(f);
    assert_non_null(strstr(log, "R t=a/1 p=/0 q0 r1 x0 ts435200000031491\n"));
    assert_non_null(strstr(log, "R t=max/3 p=/0 q0 r1 x0 ts9223372036854775807\n"));
    assert_non_null(strstr(log, "R t=min/3 p=/0 q0 r1 x0 ts-9223372036854775808\n"));
    assert_non_null(strstr(log, "R t=b/1 p=/0 q0 r1 x0 ts5\n"));
    assert_int_equal(strlen(log), strlen("R t=a/1 p=/0 q0 r1 x0 ts435200000031491\n"
                                         "R t=max/3 p=/0 q0 r1 x0 ts9223372036854775807\n"
                                         "R t=min/3 p=/0 q0 r1 x0 ts-9223372036854775808\n"
                                         "R t=b/1 p=/0 q0 r1 x0 ts5\n"));
}

/* ---- cross-shard outbox and peers ---- */

static void test_cy_store_outbox_put_ack_order(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    static const uint8_t bin[] = {0, 'x', 0xff, 0};
    /* Out of order, two peers interleaved: the load sorts by peer, seq. */
    assert_int_equal(cy_store_outbox_put(s, 7, 3, (const uint8_t *)"c", 1), 0);
    assert_int_equal(cy_store_outbox_put(s, 0, 2, bin, sizeof(bin)), 0);
    assert_int_equal(cy_store_outbox_put(s, 7, 1, (const uint8_t *)"aXX", 1), 0);
    assert_int_equal(cy_store_outbox_put(s, 0, 1, NULL, 0), 0); /* empty frame */
    assert_int_equal(cy_store_outbox_put(s, 7, 2, bin, 0), 0);  /* empty, non-NULL */
    assert_int_equal(cy_store_outbox_put(s, 63, 1, (const uint8_t *)"z", 1), 0);
    assert_int_equal(cy_store_outbox_put(s, 7, 3, (const uint8_t *)"C2", 2), 0); /* replaces */
    assert_int_equal(cy_store_pending(s), 7);
    assert_string_equal(load(s), "O 0 #1 /0\n"
                                 "O 0 #2 \\x00x\\xff\\x00/4\n"
                                 "O 7 #1 a/1\n"
                                 "O 7 #2 /0\n"
                                 "O 7 #3 C2/2\n"
                                 "O 63 #1 z/1\n");
    /* An ack removes that peer's prefix only. */
    assert_int_equal(cy_store_outbox_ack(s, 7, 2), 0);
    assert_int_equal(cy_store_outbox_ack(s, 5, 100), 0); /* nothing there: fine */
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "O 0 #1 /0\n"
                                       "O 0 #2 \\x00x\\xff\\x00/4\n"
                                       "O 7 #3 C2/2\n"
                                       "O 63 #1 z/1\n");
}

static void test_cy_store_outbox_ack_boundary(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    for (uint64_t seq = 10; seq <= 12; seq++)
        assert_int_equal(cy_store_outbox_put(s, 1, seq, (const uint8_t *)"f", 1), 0);
    assert_int_equal(cy_store_outbox_ack(s, 1, 0), 0);
    assert_int_equal(cy_store_outbox_ack(s, 1, 9), 0); /* just below: keeps 10 */
    assert_string_equal(load(s), "O 1 #10 f/1\n"
                                 "O 1 #11 f/1\n"
                                 "O 1 #12 f/1\n");
    assert_int_equal(cy_store_outbox_ack(s, 1, 11), 0); /* inclusive: 10 and 11 go */
    assert_string_equal(load(s), "O 1 #12 f/1\n");
    assert_int_equal(cy_store_outbox_ack(s, 1, 11), 0); /* again: nothing more */
    assert_string_equal(load(s), "O 1 #12 f/1\n");
    assert_int_equal(cy_store_outbox_ack(s, 1, 12), 0);
    assert_string_equal(load(s), "");
    cy_store_close(s);
}

static void test_cy_store_peer_put_upsert(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    assert_int_equal(cy_store_peer_put(s, 5, 1, 2), 0);
    assert_int_equal(cy_store_peer_put(s, 63, 0, 0), 0);
    assert_int_equal(cy_store_peer_put(s, 0, 3, 4), 0);
    assert_int_equal(cy_store_peer_put(s, 5, 10, 20), 0); /* replaces */
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "P 0 s3 a4\n"
                                       "P 5 s10 a20\n"
                                       "P 63 s0 a0\n");
    assert_int_equal(sql_int(f, "SELECT count(*) FROM peers"), 3);
}

static void test_cy_store_outbox_einval(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    assert_int_equal(cy_store_outbox_put(s, 64, 1, (const uint8_t *)"f", 1), CY_EINVAL);
    assert_int_equal(cy_store_outbox_put(s, 1000, 1, (const uint8_t *)"f", 1), CY_EINVAL);
    assert_int_equal(cy_store_outbox_put(s, 1, 1, NULL, 1), CY_EINVAL);
    assert_int_equal(cy_store_outbox_ack(s, 64, 1), CY_EINVAL);
    assert_int_equal(cy_store_peer_put(s, 64, 1, 1), CY_EINVAL);
    assert_int_equal(cy_store_peer_put(s, (unsigned)-1, 1, 1), CY_EINVAL);
    assert_int_equal(cy_store_pending(s), 0);
    assert_string_equal(load(s), "");
    cy_store_close(s);
}

/* uint64 values round-trip bit for bit, also those that are negative as
 * SQLite's int64; among values all >= 2^63 the order is still right. */
static void test_cy_store_outbox_u64_above_2_63(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    const uint64_t half = 1ULL << 63;
    assert_int_equal(cy_store_peer_put(s, 1, UINT64_MAX, half), 0);
    assert_int_equal(cy_store_peer_put(s, 2, half + 1, UINT64_MAX - 1), 0);
    assert_int_equal(cy_store_outbox_put(s, 1, UINT64_MAX, (const uint8_t *)"c", 1), 0);
    assert_int_equal(cy_store_outbox_put(s, 1, half, (const uint8_t *)"a", 1), 0);
    assert_int_equal(cy_store_outbox_put(s, 1, half + 1, (const uint8_t *)"b", 1), 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "P 1 s18446744073709551615 a9223372036854775808\n"
                                       "P 2 s9223372036854775809 a18446744073709551614\n"
                                       "O 1 #9223372036854775808 a/1\n"
                                       "O 1 #9223372036854775809 b/1\n"
                                       "O 1 #18446744073709551615 c/1\n");
    /* Stored as the int64 with the same bits (what the sqlite3 shell shows). */
    assert_int_equal(sql_int(f, "SELECT last_sent FROM peers WHERE peer = 1"), -1);
    assert_int_equal(sql_int(f, "SELECT min(seq) FROM outbox"), INT64_MIN);
    s = open_store(f);
    assert_int_equal(cy_store_outbox_ack(s, 1, half + 1), 0);
    assert_string_equal(load(s), "P 1 s18446744073709551615 a9223372036854775808\n"
                                 "P 2 s9223372036854775809 a18446744073709551614\n"
                                 "O 1 #18446744073709551615 c/1\n");
    cy_store_close(s);
}

/* Frames are re-sent at load, and a peer's ack may arrive and be written
 * before the load is over: writes from the outbox callback work. */
typedef struct rec_store {
    rec r;
    cy_store *s;
} rec_store;

static int ack_each(void *ctx, unsigned peer, uint64_t seq, const uint8_t *frame, size_t len)
{
    rec_store *rs = ctx;
    assert_int_equal(cy_store_outbox_ack(rs->s, peer, seq), 0);
    assert_int_equal(cy_store_peer_put(rs->s, peer, seq, 0), 0);
    return on_outbox(&rs->r, peer, seq, frame, len);
}

static void test_cy_store_outbox_load_callback_writes(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    for (unsigned peer = 1; peer <= 2; peer++)
        for (uint64_t seq = 1; seq <= 3; seq++)
            assert_int_equal(cy_store_outbox_put(s, peer, seq, (const uint8_t *)"f", 1), 0);
    assert_int_equal(cy_store_commit(s), 0);
    rec_store ctx = {.s = s};
    cy_store_loader l = {.outbox = ack_each};
    assert_int_equal(cy_store_load(s, &l, &ctx), 0);
    assert_string_equal(ctx.r.log, "O 1 #1 f/1\n"
                                   "O 1 #2 f/1\n"
                                   "O 1 #3 f/1\n"
                                   "O 2 #1 f/1\n"
                                   "O 2 #2 f/1\n"
                                   "O 2 #3 f/1\n");
    assert_int_equal(cy_store_pending(s), 12);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "P 1 s3 a0\n"
                                       "P 2 s3 a0\n");
}

/* The new paths allocate nothing of cyan's, so they cannot fail for memory. */
static void test_cy_store_outbox_no_alloc(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    cy_alloc_fail_after(0);
    assert_int_equal(cy_store_outbox_put(s, 1, 1, (const uint8_t *)"f", 1), 0);
    assert_int_equal(cy_store_outbox_put(s, 1, 2, (const uint8_t *)"g", 1), 0);
    assert_int_equal(cy_store_outbox_ack(s, 1, 1), 0);
    assert_int_equal(cy_store_peer_put(s, 1, 2, 3), 0);
    cy_store_msg m = {.topic = "r", .topic_len = 1, .ts = 4};
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(load(s), "R t=r/1 p=/0 q0 r1 x0 ts4\n"
                                 "P 1 s2 a3\n"
                                 "O 1 #2 g/1\n");
    cy_alloc_fail_after(-1);
    cy_store_close(s);
}

/* ---- schema migration ---- */

/* The exact version 1 schema, as cyan 1 created it (copied from store.c
 * before version 2). Do not edit: it is the input the migration must take. */
static const char schema_v1[] = "CREATE TABLE IF NOT EXISTS sessions("
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
                                "CREATE INDEX IF NOT EXISTS msgs_client ON msgs(client_id, id);"
                                "CREATE TABLE IF NOT EXISTS inq2("
                                " client_id TEXT NOT NULL,"
                                " packet_id INTEGER NOT NULL,"
                                " PRIMARY KEY(client_id, packet_id)) WITHOUT ROWID;"
                                "CREATE TABLE IF NOT EXISTS retained("
                                " topic TEXT PRIMARY KEY NOT NULL,"
                                " payload BLOB NOT NULL,"
                                " props BLOB,"
                                " qos INTEGER NOT NULL,"
                                " expiry_at INTEGER NOT NULL);"
                                "PRAGMA user_version = 1;";

/* A version 1 file with a row in each table, in WAL mode as cyan 1 left it. */
static void make_v1(fixture *f)
{
    sql_exec(f, "PRAGMA journal_mode = WAL");
    sql_exec(f, schema_v1);
    sql_exec(f, "INSERT INTO sessions VALUES('c', 5, 60, 0);"
                "INSERT INTO subs VALUES('c', 'a/#', 1, 0);"
                "INSERT INTO msgs VALUES(1, 'c', 't', x'6d', NULL, 1, 0, 0, 0, 0, NULL);"
                "INSERT INTO inq2 VALUES('c', 9);"
                "INSERT INTO retained VALUES('r/1', x'7600', x'030001', 1, 5)");
}

static const char v1_load[] = "S c v5 e60 d0\n"
                              "B c a/# o1 i0\n"
                              "Q c 9\n"
                              "M c #1 t=t/1 p=m/1 q1 r0 x0 pid0 st0 ids[]\n"
                              "R t=r/1/3 p=v\\x00/2 pr=\\x03\\x00\\x01 q1 r1 x5 ts0\n";

static void test_cy_store_open_migrates_v1(void **state)
{
    fixture *f = *state;
    make_v1(f);
    assert_int_equal(user_version(f), 1);

    assert_int_equal(sql_int(f, "PRAGMA auto_vacuum"), 0);
    cy_store *s = open_store(f);
    assert_int_equal(user_version(f), 6);
    /* converted once (VACUUM) so that freed pages can be given back */
    assert_int_equal(sql_int(f, "PRAGMA auto_vacuum"), 2);
    /* version 6 dropped the index of msgs by session */
    assert_int_equal(sql_int(f, "SELECT count(*) FROM sqlite_schema WHERE name = 'msgs_client'"),
                     0);
    assert_string_equal(load(s), v1_load);
    /* The migrated file works like a new one. */
    cy_store_msg m = {.topic = "r/2", .topic_len = 3, .ts = 77};
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    assert_int_equal(cy_store_peer_put(s, 3, 2, 1), 0);
    assert_int_equal(cy_store_outbox_put(s, 3, 1, (const uint8_t *)"f1", 2), 0);
    assert_int_equal(cy_store_outbox_put(s, 3, 2, (const uint8_t *)"f2", 2), 0);
    assert_int_equal(cy_store_outbox_ack(s, 3, 1), 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);

    /* Reopening a migrated file migrates nothing more. */
    const char *log = load_fresh(f);
    assert_non_null(strstr(log, v1_load));
    assert_non_null(strstr(log, "R t=r/2/3 p=/0 q0 r1 x0 ts77\n"));
    assert_non_null(strstr(log, "P 3 s2 a1\n"
                                "O 3 #2 f2/2\n"));
    assert_int_equal(strlen(log), strlen(v1_load) + strlen("R t=r/2/3 p=/0 q0 r1 x0 ts77\n"
                                                           "P 3 s2 a1\n"
                                                           "O 3 #2 f2/2\n"));
    assert_int_equal(user_version(f), 6);
    /* The file is as a new one would be, column for column. */
    assert_int_equal(sql_int(f, "SELECT count(*) FROM pragma_table_info('retained')"
                                " WHERE name = 'ts' AND \"notnull\" = 1"),
                     1);
    assert_int_equal(sql_int(f, "SELECT count(*) FROM pragma_table_info('retained')"
                                " WHERE name = 'owner' AND \"notnull\" = 0"),
                     1);
    assert_int_equal(sql_int(f, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"), 12);
}

/* A migration that fails halfway leaves the file exactly at version 1. An
 * index named "peers" makes the migration's CREATE TABLE peers fail after
 * the ALTER TABLE and CREATE TABLE outbox before it succeeded. */
static void test_cy_store_open_migration_atomic(void **state)
{
    fixture *f = *state;
    make_v1(f);
    sql_exec(f, "CREATE INDEX peers ON sessions(version)");
    cy_store *s = (cy_store *)1;
    assert_int_equal(cy_store_open(f->path, false, &s), CY_ESTORE);
    assert_null(s);
    assert_int_equal(user_version(f), 1);
    assert_int_equal(sql_int(f, "SELECT count(*) FROM pragma_table_info('retained')"
                                " WHERE name = 'ts'"),
                     0);
    assert_int_equal(sql_int(f, "SELECT count(*) FROM sqlite_schema WHERE name = 'outbox'"), 0);

    /* With the obstacle gone the same file migrates. */
    sql_exec(f, "DROP INDEX peers");
    s = open_store(f);
    assert_string_equal(load(s), v1_load);
    cy_store_close(s);
    assert_int_equal(user_version(f), 6);
}

/* A version 2 file (as the previous cyan left it) gains retained.owner;
 * its retained rows are nobody's. */
static void test_cy_store_open_migrates_v2(void **state)
{
    fixture *f = *state;
    make_v1(f);
    cy_store *s = open_store(f);
    cy_store_close(s);
    sql_exec(f, "ALTER TABLE retained DROP COLUMN owner; PRAGMA user_version = 2");
    assert_int_equal(user_version(f), 2);
    s = open_store(f);
    assert_int_equal(user_version(f), 6);
    assert_string_equal(load(s), v1_load);
    cy_store_msg m = {.topic = "r/2", .topic_len = 3, .owner = "dev1", .owner_len = 4};
    assert_int_equal(cy_store_retain_put(s, &m), 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_non_null(strstr(load_fresh(f), "R t=r/2/3 p=/0 q0 r1 x0 ts0 ow=dev1\n"));
}

/* ---- load ---- */

static void fill(cy_store *s)
{
    put_session(s, "b", 4, 1, 2);
    put_session(s, "a", 5, 3, 4);
    assert_int_equal(cy_store_sub_put(s, "a", "f", 1, 1, 0), 0);
    assert_int_equal(cy_store_sub_put(s, "b", "g", 1, 0, 0), 0);
    put_msg(s, "a", "t", "m1");
    put_msg(s, "b", "t", "m2");
    assert_int_equal(cy_store_inq2_put(s, "a", 9), 0);
    assert_int_equal(cy_store_inq2_put(s, "b", 8), 0);
    cy_store_msg r = {
        .topic = "rt", .topic_len = 2, .payload = (const uint8_t *)"rv", .payload_len = 2, .ts = 7};
    assert_int_equal(cy_store_retain_put(s, &r), 0);
    assert_int_equal(cy_store_peer_put(s, 2, 10, 20), 0);
    assert_int_equal(cy_store_peer_put(s, 1, 5, 6), 0);
    assert_int_equal(cy_store_outbox_put(s, 2, 10, (const uint8_t *)"f2", 2), 0);
    assert_int_equal(cy_store_outbox_put(s, 1, 5, (const uint8_t *)"f1", 2), 0);
    assert_int_equal(cy_store_commit(s), 0);
}

static void test_cy_store_load_order(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    fill(s);
    /* Every session first, then each session's subs and inq2, then every
     * msg in id order, then retained, peers, outbox. */
    assert_string_equal(load(s), "S a v5 e3 d4\n"
                                 "S b v4 e1 d2\n"
                                 "B a f o1 i0\n"
                                 "Q a 9\n"
                                 "B b g o0 i0\n"
                                 "Q b 8\n"
                                 "M a #1 t=t/1 p=m1/2 q1 r0 x0 pid0 st0 ids[]\n"
                                 "M b #2 t=t/1 p=m2/2 q1 r0 x0 pid0 st0 ids[]\n"
                                 "R t=rt/2 p=rv/2 q0 r1 x0 ts7\n"
                                 "P 1 s5 a6\n"
                                 "P 2 s10 a20\n"
                                 "O 1 #5 f1/2\n"
                                 "O 2 #10 f2/2\n");
    cy_store_close(s);
}

static void test_cy_store_load_null_callbacks(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    fill(s);
    rec r = {0};
    cy_store_loader only_msgs = {.msg = on_msg};
    assert_int_equal(cy_store_load(s, &only_msgs, &r), 0);
    assert_string_equal(r.log, "M a #1 t=t/1 p=m1/2 q1 r0 x0 pid0 st0 ids[]\n"
                               "M b #2 t=t/1 p=m2/2 q1 r0 x0 pid0 st0 ids[]\n");
    memset(&r, 0, sizeof(r));
    cy_store_loader only_retained = {.retained = on_retained};
    assert_int_equal(cy_store_load(s, &only_retained, &r), 0);
    assert_string_equal(r.log, "R t=rt/2 p=rv/2 q0 r1 x0 ts7\n");
    memset(&r, 0, sizeof(r));
    cy_store_loader only_outbox = {.outbox = on_outbox};
    assert_int_equal(cy_store_load(s, &only_outbox, &r), 0);
    assert_string_equal(r.log, "O 1 #5 f1/2\n"
                               "O 2 #10 f2/2\n");
    memset(&r, 0, sizeof(r));
    cy_store_loader only_peers = {.peer = on_peer};
    assert_int_equal(cy_store_load(s, &only_peers, &r), 0);
    assert_string_equal(r.log, "P 1 s5 a6\n"
                               "P 2 s10 a20\n");
    cy_store_loader none = {0};
    assert_int_equal(cy_store_load(s, &none, NULL), 0);
    assert_int_equal(cy_store_load(s, NULL, NULL), CY_EINVAL);
    cy_store_close(s);
}

static void test_cy_store_load_stop(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    fill(s);
    /* Stop at every callback in turn: the value comes back, nothing after
     * it is reported, and the handle keeps working. */
    for (int k = 1; k <= 13; k++) {
        rec r = {.stop_at = k};
        assert_int_equal(cy_store_load(s, &all, &r), 42);
        assert_int_equal(r.calls, k);
        put_msg(s, "a", "t", "more");
        assert_int_equal(cy_store_commit(s), 0);
    }
    cy_store_close(s);
}

static void test_cy_store_load_alloc_fail(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "c", 5, 0, 0);
    static const uint32_t ids[] = {4, 5};
    cy_store_msg m = {.topic = "t", .topic_len = 1, .sub_ids = ids, .n_sub_ids = 2};
    assert_int_equal(cy_store_msg_put(s, "c", &m), 0);
    assert_int_equal(cy_store_commit(s), 0);
    rec r = {0};
    cy_alloc_fail_after(0);
    assert_int_equal(cy_store_load(s, &all, &r), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    assert_string_equal(load(s), "S c v5 e0 d0\n"
                                 "M c #1 t=t/1 p=/0 q0 r0 x0 pid0 st0 ids[4,5]\n");
    cy_store_close(s);
}

static void test_cy_store_load_corrupt_sub_ids(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "c", 5, 0, 0);
    put_msg(s, "c", "t", "x");
    cy_store_close(s);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE msgs SET sub_ids = x'010203'", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    s = open_store(f);
    rec r = {0};
    assert_int_equal(cy_store_load(s, &all, &r), CY_ESTORE);
    cy_store_close(s);
}

/* A loader that drops expired sessions while loading, as the broker may. */
static int drop_expired(void *ctx, const cy_store_session *sess)
{
    cy_store *s = ctx;
    if (sess->expiry == 0) assert_int_equal(cy_store_session_delete(s, sess->client_id), 0);
    return 0;
}

static int drop_expired_commit(void *ctx, const cy_store_session *sess)
{
    drop_expired(ctx, sess);
    assert_int_equal(cy_store_commit(ctx), 0);
    return 0;
}

static void test_cy_store_load_callback_writes(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "old", 5, 0, 0);
    put_session(s, "new", 5, 60, 0);
    put_msg(s, "old", "t", "x");
    assert_int_equal(cy_store_commit(s), 0);

    cy_store_loader l = {.session = drop_expired};
    assert_int_equal(cy_store_load(s, &l, s), 0);
    assert_int_equal(cy_store_pending(s), 1);
    assert_int_equal(cy_store_commit(s), 0);
    /* A load with no writes leaves nothing open behind it. */
    assert_int_equal(cy_store_load(s, &l, s), 0);
    assert_int_equal(cy_store_pending(s), 0);
    /* Even a commit from inside a callback is allowed. */
    put_session(s, "old2", 5, 0, 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_loader lc = {.session = drop_expired_commit};
    assert_int_equal(cy_store_load(s, &lc, s), 0);
    assert_int_equal(cy_store_pending(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "S new v5 e60 d0\n");
}

/* ---- group commit and durability ---- */

static void test_cy_store_pending_counts(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    assert_int_equal(cy_store_pending(s), 0);
    assert_int_equal(cy_store_commit(s), 0); /* nothing open: fine */
    put_session(s, "c", 5, 0, 0);
    assert_int_equal(cy_store_pending(s), 1);
    assert_int_equal(cy_store_sub_put(s, "c", "f", 1, 0, 0), 0);
    int64_t id = put_msg(s, "c", "t", "x");
    assert_int_equal(cy_store_msg_update(s, id, 1, CY_MSG_SENT), 0);
    assert_int_equal(cy_store_inq2_put(s, "c", 1), 0);
    assert_int_equal(cy_store_pending(s), 5);
    assert_int_equal(cy_store_commit(s), 0);
    assert_int_equal(cy_store_pending(s), 0);
    assert_int_equal(cy_store_commit(s), 0);
    assert_int_equal(cy_store_msg_delete(s, id), 0);
    assert_int_equal(cy_store_pending(s), 1);
    assert_int_equal(cy_store_commit(s), 0);
    assert_int_equal(cy_store_pending(s), 0);
    cy_store_close(s);
}

/* Another connection (another process in production) sees committed
 * batches and never the pending one. */
static void test_cy_store_commit_visibility(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "committed", 5, 0, 0);
    assert_int_equal(cy_store_commit(s), 0);
    put_session(s, "pending", 5, 0, 0);
    cy_store *other = open_store(f);
    assert_string_equal(load(other), "S committed v5 e0 d0\n");
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(load(other), "S committed v5 e0 d0\n"
                                     "S pending v5 e0 d0\n");
    cy_store_close(other);
    cy_store_close(s);
}

static void test_cy_store_close_commits_pending(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "c", 5, 0, 0);
    put_msg(s, "c", "t", "x");
    assert_int_equal(cy_store_pending(s), 2);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "S c v5 e0 d0\n"
                                       "M c #1 t=t/1 p=x/1 q1 r0 x0 pid0 st0 ids[]\n");
}

/* The child runs body (commit one batch, leave a second pending), says so
 * on a pipe and waits; the parent kills it with SIGKILL, as the supervisor
 * kills a hung shard: no destructor, no commit, no flush runs in the child.
 * (A child that _exits or kills itself would do as well, but valgrind then
 * reports the child's unclosed handle.) A failing child exits with the code
 * body returns, naming its step. Then the file must hold exactly expect. */
static void crash_run(fixture *f, bool sync_full, int (*body)(cy_store *s), const char *expect)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        cy_store *s;
        if (cy_store_open(f->path, sync_full, &s)) _exit(10);
        int code = body(s);
        if (code) _exit(code);
        if (write(fds[1], "k", 1) != 1) _exit(9);
        for (;;)
            pause();
    }
    close(fds[1]);
    char c;
    if (read(fds[0], &c, 1) == 1) kill(pid, SIGKILL); /* else the child failed and exited */
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFSIGNALED(status)) fail_msg("child exited with %d", WEXITSTATUS(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
    assert_string_equal(load_fresh(f), expect);
}

static int crash_sessions(cy_store *s)
{
    cy_store_session sess = {"kept", 5, 60, 0};
    if (cy_store_session_put(s, &sess)) return 11;
    cy_store_msg m = {.topic = "t",
                      .topic_len = 1,
                      .payload = (const uint8_t *)"acked",
                      .payload_len = 5,
                      .qos = 1};
    if (cy_store_msg_put(s, "kept", &m)) return 12;
    if (cy_store_commit(s)) return 13;
    cy_store_session lost = {"lost", 5, 60, 0};
    if (cy_store_session_put(s, &lost)) return 14;
    m.payload = (const uint8_t *)"unacked";
    m.payload_len = 7;
    if (cy_store_msg_put(s, "kept", &m)) return 15;
    if (cy_store_pending(s) != 2) return 16;
    return 0;
}

static const char crash_sessions_expect[] = "S kept v5 e60 d0\n"
                                            "M kept #1 t=t/1 p=acked/5 q1 r0 x0 pid0 st0 ids[]\n";

static void test_cy_store_commit_survives_sigkill(void **state)
{
    crash_run(*state, false, crash_sessions, crash_sessions_expect);
}

static void test_cy_store_commit_survives_sigkill_sync_full(void **state)
{
    crash_run(*state, true, crash_sessions, crash_sessions_expect);
}

/* The bus's pattern: frames and sequence state commit with the work; an
 * acknowledgement and newer frames still pending at the kill are lost, so
 * the acknowledged frame comes back and is sent again. */
static int crash_outbox(cy_store *s)
{
    const uint8_t *fr = (const uint8_t *)"frame";
    for (uint64_t seq = 1; seq <= 3; seq++)
        if (cy_store_outbox_put(s, 1, seq, fr, 5)) return 11;
    if (cy_store_outbox_put(s, 2, 1, fr, 5)) return 12;
    if (cy_store_peer_put(s, 1, 3, 0) || cy_store_peer_put(s, 2, 1, 7)) return 13;
    if (cy_store_outbox_ack(s, 1, 1)) return 14;
    if (cy_store_commit(s)) return 15;
    if (cy_store_outbox_ack(s, 1, 2)) return 16;
    if (cy_store_outbox_put(s, 1, 4, fr, 5) || cy_store_outbox_put(s, 3, 1, fr, 5)) return 17;
    if (cy_store_peer_put(s, 1, 4, 9) || cy_store_peer_put(s, 3, 1, 0)) return 18;
    if (cy_store_pending(s) != 5) return 19;
    return 0;
}

static void test_cy_store_outbox_survives_sigkill(void **state)
{
    crash_run(*state, false, crash_outbox,
              "P 1 s3 a0\n"
              "P 2 s1 a7\n"
              "O 1 #2 frame/5\n"
              "O 1 #3 frame/5\n"
              "O 2 #1 frame/5\n");
}

/* A write that cannot get the write lock waits the busy timeout (5 s), then
 * fails with CY_ESTORE, fails its batch (the caller acted on a write that
 * did not happen: nothing of the pass may be acknowledged) and leaves the
 * handle usable. */
static void test_cy_store_session_put_busy(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);

    int64_t t0 = cy_mono_ms();
    cy_store_session sess = {"c", 5, 0, 0};
    assert_int_equal(cy_store_session_put(s, &sess), CY_ESTORE);
    int64_t waited = cy_mono_ms() - t0;
    assert_true(waited >= 4000);              /* it waited instead of failing at once */
    assert_int_equal(cy_store_pending(s), 1); /* the failed write, so the loop commits */
    assert_false(cy_store_no_space(s));       /* busy is not a full disk */
    assert_int_equal(cy_store_commit(s), CY_ESTORE);
    assert_int_equal(cy_store_pending(s), 0);

    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(cy_store_session_put(s, &sess), 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "S c v5 e0 d0\n");
}

/* The disk fills up mid-batch (RLIMIT_FSIZE stands in for a full disk):
 * whichever call notices, the batch is not reported committed, none of it
 * is on disk, earlier batches are intact and the handle recovers. */
static void test_cy_store_commit_disk_full(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "before", 5, 0, 0);
    assert_int_equal(cy_store_commit(s), 0);

    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    char wal[160];
    snprintf(wal, sizeof(wal), "%s-wal", f->path);
    struct stat st;
    assert_int_equal(stat(wal, &st), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)st.st_size; /* no file may grow any more */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);

    put_session(s, "during", 5, 0, 0);
    size_t big_len = 4 << 20; /* more than the page cache holds: it spills */
    uint8_t *big = calloc(1, big_len);
    assert_non_null(big);
    cy_store_msg m = {.topic = "t", .topic_len = 1, .payload = big, .payload_len = big_len};
    int rc = cy_store_msg_put(s, "during", &m);
    assert_true(rc == 0 || rc == CY_ESTORE);
    put_session(s, "after-error", 5, 0, 0);
    assert_int_equal(cy_store_commit(s), CY_ESTORE);
    assert_int_equal(cy_store_pending(s), 0);

    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    free(big);
    assert_string_equal(load(s), "S before v5 e0 d0\n");
    put_session(s, "recovered", 5, 0, 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    assert_string_equal(load_fresh(f), "S before v5 e0 d0\n"
                                       "S recovered v5 e0 d0\n");
}

/* A statement that fails while SQLite keeps the transaction open (here: a
 * message too large for SQLITE_LIMIT_LENGTH) fails the whole batch all the
 * same: what was written before it in the batch is rolled back too. */
static void test_cy_store_failed_write_fails_batch(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    put_session(s, "keep", 5, 0, 0);
    assert_int_equal(cy_store_commit(s), 0);
    put_session(s, "c", 5, 0, 0);
    size_t big_len = (size_t)1 << 30; /* over SQLite's default 1e9 byte limit */
    cy_store_msg m = {
        .topic = "t", .topic_len = 1, .payload = (const uint8_t *)"", .payload_len = 0};
    assert_int_equal(cy_store_msg_put(s, "c", &m), 0);
    uint8_t *big = malloc(big_len);
    if (big) { /* an allocation this size may be refused under ASan: then skip that part */
        m.payload = big;
        m.payload_len = big_len;
        assert_int_equal(cy_store_msg_put(s, "c", &m), CY_ESTORE);
        free(big);
        assert_int_equal(cy_store_pending(s), 3);
        assert_int_equal(cy_store_commit(s), CY_ESTORE);
        assert_string_equal(load(s), "S keep v5 e0 d0\n");
    }
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
}

/* cy_store_space reports the file system's free bytes; cy_store_bytes
 * grows by at least what the writes carried. */
static void test_cy_store_space_and_bytes(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    uint64_t free_bytes = 0;
    assert_int_equal(cy_store_space(s, &free_bytes), 0);
    assert_true(free_bytes > 0);
    assert_int_equal(cy_store_space(s, NULL), CY_EINVAL);
    uint64_t b0 = cy_store_bytes(s);
    put_session(s, "c", 5, 0, 0);
    uint8_t payload[1000] = {0};
    cy_store_msg m = {.topic = "t/x", .topic_len = 3, .payload = payload, .payload_len = 1000};
    assert_int_equal(cy_store_msg_put(s, "c", &m), 0);
    assert_true(cy_store_bytes(s) - b0 >= 1003);
    assert_int_equal(cy_store_commit(s), 0);
    assert_true(cy_store_bytes(s) - b0 >= 1003); /* never reset */
    cy_store_close(s);
}

/* A real full file system (a 2 MiB tmpfs; skipped where mounting is not
 * permitted): the write or the commit that finds no room fails the batch,
 * cy_store_no_space says why, what was committed before is intact, and once
 * there is room again (a filler file removed) the handle writes again. */
static void test_cy_store_no_space_tmpfs(void **state)
{
    fixture *f = *state;
    char mnt[128], path[192], filler[192];
    snprintf(mnt, sizeof(mnt), "%s/mnt", f->dir);
    assert_int_equal(mkdir(mnt, 0700), 0);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "mount -t tmpfs -o size=2m tmpfs %s 2>/dev/null", mnt);
    if (geteuid() != 0 || system(cmd) != 0) {
        rmdir(mnt);
        skip();
    }
    snprintf(path, sizeof(path), "%s/broker.db", mnt);
    snprintf(filler, sizeof(filler), "%s/filler", mnt);
    cy_store *s;
    assert_int_equal(cy_store_open(path, false, &s), 0);
    put_session(s, "before", 5, 0, 0);
    assert_int_equal(cy_store_commit(s), 0);
    assert_false(cy_store_no_space(s));
    /* A filler file holds some of the space, to be given back later. */
    FILE *fl = fopen(filler, "w");
    assert_non_null(fl);
    static uint8_t chunk[64 << 10];
    memset(chunk, 'f', sizeof(chunk));
    for (int i = 0; i < 16; i++)
        assert_int_equal(fwrite(chunk, 1, sizeof(chunk), fl), sizeof(chunk));
    fclose(fl);
    int failed_at = -1;
    for (int i = 0; i < 64 && failed_at < 0; i++) {
        cy_store_session sess = {"c", 5, 0, 0};
        cy_store_session_put(s, &sess); /* may be the write that finds no room */
        cy_store_msg m = {.topic = "t", .topic_len = 1, .payload = chunk, .payload_len = 60000};
        int rc = cy_store_msg_put(s, "c", &m);
        if (cy_store_commit(s) != 0) {
            assert_true(rc == 0 || rc == CY_ESTORE);
            failed_at = i;
        }
    }
    assert_true(failed_at >= 0);
    assert_true(cy_store_no_space(s));
    uint64_t free_bytes = 1;
    assert_int_equal(cy_store_space(s, &free_bytes), 0);
    assert_true(free_bytes < (64 << 10));
    unlink(filler);
    assert_int_equal(cy_store_space(s, &free_bytes), 0);
    assert_true(free_bytes >= (1 << 20));
    put_session(s, "after", 5, 0, 0);
    assert_int_equal(cy_store_session_delete(s, "c"), 0); /* its messages, for a short load */
    assert_int_equal(cy_store_commit(s), 0);
    assert_false(cy_store_no_space(s)); /* cleared by the batch that committed */
    cy_store_close(s);
    assert_int_equal(cy_store_open(path, false, &s), 0); /* what is on disk */
    const char *loaded = load(s);
    assert_string_equal(loaded, "S after v5 e0 d0\nS before v5 e0 d0\n");
    cy_store_close(s);
    snprintf(cmd, sizeof(cmd), "umount %s", mnt);
    assert_int_equal(system(cmd), 0);
    rmdir(mnt);
}

/* Informational only: the cost of the broker's write pattern. */
static void test_cy_store_msg_put_cost(void **state)
{
    fixture *f = *state;
    uint8_t payload[64]; /* a typical device event */
    memset(payload, 'p', sizeof(payload));
    for (int full = 0; full < 2; full++) {
        cy_store *s;
        assert_int_equal(cy_store_open(f->path, full, &s), 0);
        put_session(s, "c", 5, 0, 0);
        int64_t t0 = cy_mono_ms();
        for (int i = 0; i < 10000; i++) {
            cy_store_msg m = {.topic = "devices/abc/events/temp",
                              .topic_len = 23,
                              .payload = payload,
                              .payload_len = sizeof(payload),
                              .qos = 1};
            assert_int_equal(cy_store_msg_put(s, "c", &m), 0);
            if (i % 100 == 99) assert_int_equal(cy_store_commit(s), 0);
        }
        int64_t ms = cy_mono_ms() - t0;
        printf("  store cost: 10000 msg_put, commit every 100, sync %s: %lld ms (%.1f us/put)\n",
               full ? "full" : "normal", (long long)ms, ms * 1000.0 / 10000);
        cy_store_close(s);
    }
}

/* ---- presence ---- */

static int presence_row(void *ctx, const cy_store_presence *p)
{
    char *out = ctx;
    size_t n = strlen(out);
    snprintf(out + n, 512 - n, "%s %d %s h%lld r%lld\n", p->id, p->online, p->protocol,
             (long long)p->last_heard, (long long)p->last_rtt);
    return 0;
}

static int presence_stop(void *ctx, const cy_store_presence *p)
{
    (void)p;
    ++*(int *)ctx;
    return 7;
}

/* Rows are upserted and deleted in the batch, read back by id, and a v4
 * file (before presence) gains the table. */
static void test_cy_store_presence(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    char out[512] = "";
    assert_int_equal(cy_store_presence_load(s, presence_row, out), 0);
    assert_string_equal(out, "");
    cy_store_presence a = {"bbb", true, "mqtt5", 1000, 0};
    cy_store_presence b = {"aaa", false, NULL, 5, 6};
    assert_int_equal(cy_store_presence_put(s, &a), 0);
    assert_int_equal(cy_store_presence_put(s, &b), 0);
    assert_int_equal(cy_store_pending(s), 2);
    a.online = false;
    a.last_rtt = 2000;
    a.protocol = "coaps";
    assert_int_equal(cy_store_presence_put(s, &a), 0); /* the same row */
    assert_int_equal(cy_store_commit(s), 0);
    assert_int_equal(cy_store_presence_load(s, presence_row, out), 0);
    assert_string_equal(out, "aaa 0  h5 r6\nbbb 0 coaps h1000 r2000\n");
    int n = 0;
    assert_int_equal(cy_store_presence_load(s, presence_stop, &n), 7); /* fn stops it */
    assert_int_equal(n, 1);
    assert_int_equal(cy_store_presence_delete(s, "aaa"), 0);
    assert_int_equal(cy_store_presence_delete(s, "none"), 0);
    assert_int_equal(cy_store_commit(s), 0);
    out[0] = '\0';
    assert_int_equal(cy_store_presence_load(s, presence_row, out), 0);
    assert_string_equal(out, "bbb 0 coaps h1000 r2000\n");
    assert_int_equal(cy_store_presence_put(s, NULL), CY_EINVAL);
    cy_store_presence noid = {NULL, false, NULL, 0, 0};
    assert_int_equal(cy_store_presence_put(s, &noid), CY_EINVAL);
    assert_int_equal(cy_store_presence_delete(s, NULL), CY_EINVAL);
    assert_int_equal(cy_store_presence_load(s, NULL, NULL), CY_EINVAL);
    cy_store_close(s);

    /* Back to version 4: the migration adds the table, empty. */
    sql_exec(f, "DROP TABLE presence; PRAGMA user_version = 4");
    s = open_store(f);
    assert_int_equal(user_version(f), 6);
    out[0] = '\0';
    assert_int_equal(cy_store_presence_load(s, presence_row, out), 0);
    assert_string_equal(out, "");
    assert_int_equal(cy_store_presence_put(s, &a), 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cy_store_open_creates_wal_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_open_missing_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_open_not_a_database, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_open_newer_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_open_einval, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_open_alloc_fail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_close_null, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_session_put_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_session_put_upsert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_session_put_einval, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_session_delete_cascades, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_load_deletes_orphan_msgs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_sub_put_upsert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_sub_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_msg_put_all_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_msg_put_many_sub_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_msg_put_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_msg_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_msg_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_msg_put_einval, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_inq2_put_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_retain_put_replace_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_retain_put_props, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_retain_put_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_reclaim_shrinks_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_retain_put_ts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_outbox_put_ack_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_outbox_ack_boundary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_peer_put_upsert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_outbox_einval, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_outbox_u64_above_2_63, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_outbox_load_callback_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_outbox_no_alloc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_open_migrates_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_open_migration_atomic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_open_migrates_v2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_presence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_load_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_load_null_callbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_load_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_load_alloc_fail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_load_corrupt_sub_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_load_callback_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_pending_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_commit_visibility, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_close_commits_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_commit_survives_sigkill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_commit_survives_sigkill_sync_full, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_outbox_survives_sigkill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_session_put_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_commit_disk_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_failed_write_fails_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_space_and_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_no_space_tmpfs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_store_msg_put_cost, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
