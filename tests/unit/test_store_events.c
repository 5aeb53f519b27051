/* Tests of the shard store's event log and webhook delivery state
 * (src/store/store.c, "the event log" and "webhook delivery state"), and of
 * the read-only handle other processes open on a shard's file.
 *
 * What they try to break: the sequence number (max(last + 1, at * 1000):
 * ordered and unique when the clock steps back or many events share a
 * millisecond, carried across a reopen and a trim of everything, not
 * advanced by a failed append, kept below 2^63 where SQLite's signed order
 * stops being ours), byte-exact round trips (empty payloads,
 * topics with NULs and bytes that are not UTF-8), every bound of the trim,
 * the read calls' after/limit edges, the upserts and deletes of the webhook
 * tables (one webhook's forget never touches another's, not even one whose
 * id it prefixes), group commit (these writes join the pending batch, commit
 * with it and are lost with it, also across a SIGKILL), the reader (only
 * committed rows, refuses writes, no file or no log yet is CY_ENOENT, a
 * corrupt file is not) and the migration of a version 3 file (all or
 * nothing).
 *
 * Failures are made cheaply with SQL triggers added from a connection of
 * the test's own: RAISE(ABORT) fails one statement and leaves the batch's
 * transaction open, RAISE(ROLLBACK) makes SQLite roll it back under the
 * store, the two cases cy_store_commit must both report.
 *
 * Rows are recorded as one line each into a text log, so a test states what
 * a read returns, order included, in one string. Small `at` values (wall ms)
 * keep the sequence numbers readable: at 7 gives 7000.
 */
#include "store_testlib.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "store/store.h"

#include <dirent.h>
#include <limits.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    strcpy(f->dir, "/tmp/cyan-store-ev-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/shard-0.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
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

static cy_store *open_reader(fixture *f)
{
    cy_store *r = NULL;
    assert_int_equal(cy_store_open_reader(f->path, &r), 0);
    assert_non_null(r);
    return r;
}

/* ---- SQL from the test's own connection ---- */

#define sql_exec(f, sql) cyt_sql_exec((f)->path, (sql))
#define sql_int(f, sql) cyt_sql_int((f)->path, (sql))

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- the recorder ---- */

/* rec, out, out_bytes and next: store_testlib.h */

static int on_event(void *ctx, const cy_store_event *e)
{
    rec *r = ctx;
    assert_non_null(e->topic);
    assert_non_null(e->payload); /* even when empty */
    out(r, "E%llu @%lld t=", (unsigned long long)e->seq, (long long)e->at);
    out_bytes(r, e->topic, e->topic_len);
    out(r, "/%zu p=", e->topic_len);
    out_bytes(r, e->payload, e->payload_len);
    out(r, "/%zu\n", e->payload_len);
    return next(r);
}

static int on_state(void *ctx, const cy_store_hook_state *h)
{
    rec *r = ctx;
    assert_non_null(h->hook);
    assert_non_null(h->shown);
    out(r, "S %s c%llu m%llu d%llu x%llu %s\n", h->hook, (unsigned long long)h->cursor,
        (unsigned long long)h->matched, (unsigned long long)h->delivered,
        (unsigned long long)h->dead, h->shown);
    return next(r);
}

static int on_row(void *ctx, const cy_store_hook_row *h)
{
    rec *r = ctx;
    assert_non_null(h->hook);
    assert_non_null(h->topic);
    assert_non_null(h->payload);
    assert_non_null(h->trail);
    out(r, "H %s #%llu @%lld t=", h->hook, (unsigned long long)h->seq, (long long)h->at);
    out_bytes(r, h->topic, h->topic_len);
    out(r, "/%zu p=", h->topic_len);
    out_bytes(r, h->payload, h->payload_len);
    out(r, "/%zu a%u n%lld %s\n", h->payload_len, h->attempts, (long long)h->next_at, h->trail);
    return next(r);
}

static int on_dead_seq(void *ctx, const char *hook, uint64_t seq)
{
    rec *r = ctx;
    out(r, "D %s #%llu\n", hook, (unsigned long long)seq);
    return next(r);
}

/* Each returns its log from static storage: compare before the next call. */
static const char *read_log(cy_store *s, uint64_t after, unsigned limit)
{
    static rec r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(cy_store_events_read(s, after, limit, on_event, &r), 0);
    return r.log;
}

static const char *tail_log(cy_store *s, unsigned limit)
{
    static rec r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(cy_store_events_tail(s, limit, on_event, &r), 0);
    return r.log;
}

static const char *all_events(cy_store *s)
{
    return read_log(s, 0, UINT_MAX);
}

/* Sorts the lines of a log in place: for the calls that promise no order. */
static int line_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static const char *sorted(char *log)
{
    static char outbuf[16384];
    char *lines[256];
    size_t n = 0;
    for (char *p = strtok(log, "\n"); p; p = strtok(NULL, "\n")) {
        assert_true(n < 256);
        lines[n++] = p;
    }
    qsort(lines, n, sizeof(lines[0]), line_cmp);
    outbuf[0] = 0;
    for (size_t i = 0; i < n; i++) {
        strcat(outbuf, lines[i]);
        strcat(outbuf, "\n");
    }
    return outbuf;
}

static const char *states_log(cy_store *s)
{
    static rec r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(cy_store_hook_states(s, on_state, &r), 0);
    return sorted(r.log);
}

static const char *retries_log(cy_store *s)
{
    static rec r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(cy_store_hook_retries(s, on_row, &r), 0);
    return r.log;
}

static const char *dead_log(cy_store *s, const char *hook, uint64_t after, unsigned limit)
{
    static rec r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(cy_store_hook_dead_list(s, hook, after, limit, on_row, &r), 0);
    return r.log;
}

static const char *dead_after_log(cy_store *s, uint64_t after)
{
    static rec r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(cy_store_hook_dead_after(s, after, on_dead_seq, &r), 0);
    return sorted(r.log);
}

/* ---- writing helpers ---- */

static uint64_t append(cy_store *s, int64_t at, const char *topic, const char *payload)
{
    uint64_t seq = 0;
    assert_int_equal(cy_store_event_append(s, at, topic, strlen(topic), (const uint8_t *)payload,
                                           strlen(payload), &seq),
                     0);
    assert_true(seq > 0);
    assert_int_equal(cy_store_event_last(s), seq);
    return seq;
}

static void put_state(cy_store *s, const char *hook, uint64_t cursor, uint64_t n, const char *shown)
{
    cy_store_hook_state h = {hook, cursor, n, n, n, shown};
    assert_int_equal(cy_store_hook_state_put(s, &h), 0);
}

static cy_store_hook_row row(const char *hook, uint64_t seq, const char *payload)
{
    return (cy_store_hook_row){.hook = hook,
                               .seq = seq,
                               .at = (int64_t)seq / 1000,
                               .topic = "events/t",
                               .topic_len = 8,
                               .payload = (const uint8_t *)payload,
                               .payload_len = strlen(payload),
                               .attempts = 1,
                               .next_at = 99,
                               .trail = "[]"};
}

static void put_retry(cy_store *s, const char *hook, uint64_t seq, const char *payload)
{
    cy_store_hook_row r = row(hook, seq, payload);
    assert_int_equal(cy_store_hook_retry_put(s, &r), 0);
}

static void put_dead(cy_store *s, const char *hook, uint64_t seq, const char *payload)
{
    cy_store_hook_row r = row(hook, seq, payload);
    assert_int_equal(cy_store_hook_dead_put(s, &r), 0);
}

/* ---- the sequence ---- */

/* A fresh log starts at the clock; events in one millisecond take the
 * next numbers; a later millisecond jumps to its own. */
static void test_cy_store_event_append_seq_from_clock(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    assert_int_equal(cy_store_event_last(s), 0);
    assert_int_equal(append(s, 5, "events/a", "1"), 5000);
    assert_int_equal(append(s, 5, "events/a", "2"), 5001);
    assert_int_equal(append(s, 6, "events/a", "3"), 6000);
    assert_int_equal(append(s, 6, "events/a", "4"), 6001);
    assert_int_equal(append(s, 6, "events/a", "5"), 6002);
    /* seq_out may be NULL */
    assert_int_equal(cy_store_event_append(s, 7, "t", 1, NULL, 0, NULL), 0);
    assert_int_equal(cy_store_event_last(s), 7000);
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(all_events(s), "E5000 @5 t=events/a/8 p=1/1\n"
                                       "E5001 @5 t=events/a/8 p=2/1\n"
                                       "E6000 @6 t=events/a/8 p=3/1\n"
                                       "E6001 @6 t=events/a/8 p=4/1\n"
                                       "E6002 @6 t=events/a/8 p=5/1\n"
                                       "E7000 @7 t=t/1 p=/0\n");
    cy_store_close(s);
}

/* The wall clock steps back (NTP, a VM resumed): numbers keep going up from
 * the last one, and the event keeps the time it was logged at, even zero
 * or negative. When the clock passes the last number again, it leads. */
static void test_cy_store_event_append_clock_steps_back(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    assert_int_equal(append(s, 10, "a", "x"), 10000);
    assert_int_equal(append(s, 3, "b", "x"), 10001);
    assert_int_equal(append(s, 0, "c", "x"), 10002);
    assert_int_equal(append(s, -5, "d", "x"), 10003);
    assert_int_equal(append(s, INT64_MIN, "e", "x"), 10004);
    assert_int_equal(append(s, 10, "f", "x"), 10005);
    assert_int_equal(append(s, 11, "g", "x"), 11000);
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(all_events(s), "E10000 @10 t=a/1 p=x/1\n"
                                       "E10001 @3 t=b/1 p=x/1\n"
                                       "E10002 @0 t=c/1 p=x/1\n"
                                       "E10003 @-5 t=d/1 p=x/1\n"
                                       "E10004 @-9223372036854775808 t=e/1 p=x/1\n"
                                       "E10005 @10 t=f/1 p=x/1\n"
                                       "E11000 @11 t=g/1 p=x/1\n");
    cy_store_close(s);
}

/* More events in one millisecond than it has microseconds: the numbers run
 * into the next milliseconds' range and the next millisecond's events
 * follow them instead of colliding. */
static void test_cy_store_event_append_burst_one_ms(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    uint64_t prev = 0;
    for (int i = 0; i < 2500; i++) {
        uint64_t seq = 0;
        assert_int_equal(cy_store_event_append(s, 1, "t", 1, NULL, 0, &seq), 0);
        assert_int_equal(seq, prev ? prev + 1 : 1000);
        prev = seq;
    }
    assert_int_equal(prev, 3499);
    assert_int_equal(append(s, 2, "t", ""), 3500); /* 2000 is taken */
    assert_int_equal(append(s, 4, "t", ""), 4000);
    assert_int_equal(cy_store_commit(s), 0);
    uint64_t first = 0, count = 0;
    assert_int_equal(cy_store_events_span(s, 0, &first, &count, NULL), 0);
    assert_int_equal(first, 1000);
    assert_int_equal(count, 2502);
    cy_store_close(s);
}

/* The open reads the last number back from the log, so a restarted shard
 * never hands out a number again, even with its clock behind. */
static void test_cy_store_event_append_survives_reopen(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    append(s, 10, "t", "a");
    append(s, 10, "t", "b");
    assert_int_equal(append(s, 10, "t", "c"), 10002);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);

    s = open_store(f);
    assert_int_equal(cy_store_event_last(s), 10002);
    assert_int_equal(append(s, 1, "t", "d"), 10003);
    cy_store_close(s); /* commits */

    s = open_store(f);
    assert_int_equal(cy_store_event_last(s), 10003);
    cy_store_close(s);

    /* Rows another program put there count as well. */
    sql_exec(f, "INSERT INTO events VALUES(123456789, 1, 't', x'')");
    s = open_store(f);
    assert_int_equal(cy_store_event_last(s), 123456789);
    assert_int_equal(append(s, 2, "t", "e"), 123456790);
    cy_store_close(s);
}

/* Trimming everything the consumers passed still keeps the newest event:
 * it carries the sequence across the next restart. */
static void test_cy_store_event_seq_survives_trim_of_everything(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    for (int64_t at = 50; at < 55; at++)
        append(s, at, "t", "x");
    assert_int_equal(append(s, 1, "t", "newest"), 54001);
    assert_int_equal(cy_store_commit(s), 0);
    /* Every bound as loose as it goes. */
    assert_int_equal(cy_store_events_trim(s, UINT64_C(1) << 62, INT64_MAX, 0, UINT_MAX), 5);
    assert_int_equal(cy_store_events_trim(s, UINT64_C(1) << 62, INT64_MAX, 0, UINT_MAX), 0);
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(all_events(s), "E54001 @1 t=t/1 p=newest/6\n");
    cy_store_close(s);

    s = open_store(f);
    assert_int_equal(cy_store_event_last(s), 54001);
    assert_int_equal(append(s, 2, "t", "after"), 54002);
    cy_store_close(s);
}

/* A trigger that refuses events with topic "boom": mode is ABORT (the
 * statement fails, the transaction stays) or ROLLBACK (SQLite rolls the
 * whole transaction back). */
static void add_boom_trigger(fixture *f, const char *table, const char *col, const char *mode)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "CREATE TRIGGER boom_%s BEFORE INSERT ON %s WHEN NEW.%s = 'boom'"
             " BEGIN SELECT RAISE(%s, 'boom'); END",
             table, table, col, mode);
    sql_exec(f, sql);
}

/* A failed append returns CY_ESTORE and gives its number to nobody: the
 * next append takes the number after the last one given, not after the
 * failed one. The batch it was in fails as a whole. */
static void test_cy_store_event_append_failure_keeps_seq(void **state)
{
    fixture *f = *state;
    cy_store_close(open_store(f));
    add_boom_trigger(f, "events", "topic", "ABORT");
    cy_store *s = open_store(f);
    assert_int_equal(append(s, 10, "ok", "1"), 10000);
    assert_int_equal(cy_store_commit(s), 0);

    assert_int_equal(append(s, 11, "ok", "2"), 11000);
    uint64_t seq = 77;
    assert_int_equal(cy_store_event_append(s, 20, "boom", 4, NULL, 0, &seq), CY_ESTORE);
    assert_int_equal(seq, 77); /* untouched */
    assert_int_equal(cy_store_event_last(s), 11000);
    assert_int_equal(cy_store_pending(s), 2); /* the failed write too: the loop must commit */
    assert_int_equal(append(s, 1, "ok", "3"), 11001);
    assert_int_equal(cy_store_commit(s), CY_ESTORE);
    assert_int_equal(cy_store_pending(s), 0);
    assert_string_equal(all_events(s), "E10000 @10 t=ok/2 p=1/1\n");
    /* Numbers handed out in the lost batch are not handed out again by this
     * handle (an event stream may have seen them). */
    assert_true(append(s, 1, "ok", "4") > 11001);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
}

/* The same when SQLite rolls the transaction back under the store: the
 * writes made after that in the same pass start a new transaction, and the
 * commit fails those too. */
static void test_cy_store_event_append_failure_rolled_back(void **state)
{
    fixture *f = *state;
    cy_store_close(open_store(f));
    add_boom_trigger(f, "events", "topic", "ROLLBACK");
    cy_store *s = open_store(f);
    append(s, 10, "ok", "1");
    assert_int_equal(cy_store_commit(s), 0);
    append(s, 11, "ok", "2");
    put_state(s, "h", 11000, 1, "{}");
    assert_int_equal(cy_store_event_append(s, 20, "boom", 4, NULL, 0, NULL), CY_ESTORE);
    assert_int_equal(cy_store_event_last(s), 11000);
    append(s, 12, "ok", "3");
    put_retry(s, "h", 12000, "r");
    assert_int_equal(cy_store_pending(s), 5);
    assert_int_equal(cy_store_commit(s), CY_ESTORE);
    assert_string_equal(all_events(s), "E10000 @10 t=ok/2 p=1/1\n");
    assert_string_equal(states_log(s), "");
    assert_string_equal(retries_log(s), "");
    cy_store_close(s);
    s = open_store(f);
    assert_string_equal(all_events(s), "E10000 @10 t=ok/2 p=1/1\n");
    assert_int_equal(cy_store_event_last(s), 10000);
    cy_store_close(s);
}

/* The batch cannot even begin (another process holds the write lock for
 * longer than the busy timeout): the append fails, its number is given to
 * nobody, the pass's commit reports the loss, and the next pass works. */
static void test_cy_store_event_append_busy(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    append(s, 10, "t", "a");
    assert_int_equal(cy_store_commit(s), 0);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    uint64_t seq = 5;
    assert_int_equal(cy_store_event_append(s, 20, "t", 1, NULL, 0, &seq), CY_ESTORE);
    assert_int_equal(seq, 5);
    assert_int_equal(cy_store_event_last(s), 10000);
    assert_int_equal(cy_store_pending(s), 1);
    assert_int_equal(cy_store_commit(s), CY_ESTORE);
    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(append(s, 1, "t", "b"), 10001);
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(all_events(s), "E10000 @10 t=t/1 p=a/1\n"
                                       "E10001 @1 t=t/1 p=b/1\n");
    cy_store_close(s);
}

static void test_cy_store_event_append_einval(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    append(s, 3, "t", "x");
    assert_int_equal(cy_store_commit(s), 0);
    uint64_t seq = 5;
    assert_int_equal(cy_store_event_append(NULL, 1, "t", 1, NULL, 0, &seq), CY_EINVAL);
    assert_int_equal(cy_store_event_append(s, 1, NULL, 0, NULL, 0, &seq), CY_EINVAL);
    assert_int_equal(cy_store_event_append(s, 1, "t", 1, NULL, 1, &seq), CY_EINVAL);
    assert_int_equal(seq, 5);
    assert_int_equal(cy_store_pending(s), 0); /* refused before the batch */
    assert_int_equal(cy_store_event_last(s), 3000);
    assert_int_equal(append(s, 1, "t", "y"), 3001);
    cy_store_close(s);
}

/* Numbers stay below 2^63 (SQLite compares them as signed integers): an
 * `at` whose microseconds overflow is refused, not wrapped to a number that
 * would sort before every other one, be skipped by every read after a
 * cursor and be forgotten by the next open; and the last numbers below
 * 2^63 are given, then refused. */
static void test_cy_store_event_append_seq_below_2_63(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    append(s, 1, "t", "a");
    assert_int_equal(cy_store_commit(s), 0);
    uint64_t seq = 5;
    assert_int_equal(cy_store_event_append(s, INT64_MAX, "t", 1, NULL, 0, &seq), CY_ERANGE);
    assert_int_equal(cy_store_event_append(s, INT64_MAX / 1000 + 1, "t", 1, NULL, 0, &seq),
                     CY_ERANGE);
    assert_int_equal(seq, 5);
    assert_int_equal(cy_store_pending(s), 0);
    assert_int_equal(cy_store_event_last(s), 1000);

    /* The largest `at` that fits; the numbers after it run up to 2^63 - 1. */
    uint64_t top = (uint64_t)(INT64_MAX / 1000) * 1000;
    assert_int_equal(append(s, INT64_MAX / 1000, "t", "b"), top);
    for (uint64_t want = top + 1; want <= (uint64_t)INT64_MAX; want++)
        assert_int_equal(append(s, 1, "t", ""), want);
    assert_int_equal(cy_store_event_append(s, 1, "t", 1, NULL, 0, &seq), CY_ERANGE);
    assert_int_equal(cy_store_event_last(s), (uint64_t)INT64_MAX);
    assert_int_equal(cy_store_commit(s), 0);
    uint64_t n = 0;
    assert_int_equal(cy_store_events_span(s, 1000, NULL, NULL, &n), 0);
    assert_int_equal(n, 808);
    assert_string_equal(read_log(s, 1000, 1),
                        "E9223372036854775000 @9223372036854775 t=t/1 p=b/1\n");
    cy_store_close(s);
    s = open_store(f);
    assert_int_equal(cy_store_event_last(s), (uint64_t)INT64_MAX);
    cy_store_close(s);
}

/* ---- what goes in comes out ---- */

/* An empty payload comes back empty, not NULL, whatever pointer it had;
 * an empty topic is a topic. */
static void test_cy_store_event_empty_round_trip(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    uint64_t a, b, c;
    assert_int_equal(cy_store_event_append(s, 1, "t", 1, NULL, 0, &a), 0);
    assert_int_equal(cy_store_event_append(s, 1, "t", 1, (const uint8_t *)"ignored", 0, &b), 0);
    assert_int_equal(cy_store_event_append(s, 1, "", 0, (const uint8_t *)"p", 1, &c), 0);
    assert_int_equal(cy_store_commit(s), 0);
    const char *expect = "E1000 @1 t=t/1 p=/0\n"
                         "E1001 @1 t=t/1 p=/0\n"
                         "E1002 @1 t=/0 p=p/1\n";
    assert_string_equal(all_events(s), expect);
    rec r = {0};
    assert_int_equal(cy_store_event_get(s, a, on_event, &r), 0);
    assert_string_equal(r.log, "E1000 @1 t=t/1 p=/0\n");
    assert_string_equal(tail_log(s, 1), "E1002 @1 t=/0 p=p/1\n");
    /* On disk a zero-length blob, never NULL (the column is NOT NULL, but
     * check what is stored, not only what comes back). */
    cy_store_close(s);
    assert_int_equal(sql_int(f, "SELECT count(*) FROM events WHERE typeof(payload) = 'blob'"), 3);
    cy_store *rd = open_reader(f);
    assert_string_equal(all_events(rd), expect);
    cy_store_close(rd);
}

typedef struct cmp_ctx {
    const char *want;
    size_t len;
    int seen;
} cmp_ctx;

static int cmp(void *ctx, const cy_store_event *e)
{
    cmp_ctx *c = ctx;
    assert_int_equal(e->topic_len, c->len);
    assert_int_equal(e->payload_len, c->len);
    assert_memory_equal(e->topic, c->want, c->len);
    assert_memory_equal(e->payload, c->want, c->len);
    c->seen++;
    return 0;
}

/* Topics are bytes: NULs, bytes that are not UTF-8, newlines, a long one;
 * payloads are bytes. All come back exactly, through the writer, a reopen
 * and a reader. */
static void test_cy_store_event_bytes_round_trip(void **state)
{
    fixture *f = *state;
    static const char topic[] = "ev\0ts/\xff\xfe\x80/\n\x01";
    static const uint8_t payload[] = {0, 1, 0xff, 0, '\\', 0x7f};
    size_t long_len = 70000;
    char *long_topic = malloc(long_len);
    assert_non_null(long_topic);
    for (size_t i = 0; i < long_len; i++)
        long_topic[i] = (char)(i % 251 + 1);
    long_topic[100] = 0;

    cy_store *s = open_store(f);
    uint64_t seq, long_seq;
    assert_int_equal(
        cy_store_event_append(s, 9, topic, sizeof(topic) - 1, payload, sizeof(payload), &seq), 0);
    assert_int_equal(cy_store_event_append(s, 9, long_topic, long_len, (const uint8_t *)long_topic,
                                           long_len, &long_seq),
                     0);
    assert_int_equal(cy_store_commit(s), 0);
    const char *expect = "E9000 @9 t=ev\\x00ts/\\xff\\xfe\\x80/\\x0a\\x01/12"
                         " p=\\x00\\x01\\xff\\x00\\x5c\\x7f/6\n";
    for (int pass = 0; pass < 3; pass++) {
        cy_store *h = pass == 0 ? s : pass == 1 ? open_store(f) : open_reader(f);
        assert_string_equal(read_log(h, 0, 1), expect);
        cmp_ctx c = {long_topic, long_len, 0};
        assert_int_equal(cy_store_events_read(h, seq, 10, cmp, &c), 0);
        assert_int_equal(c.seen, 1);
        if (h != s) cy_store_close(h);
    }
    cy_store_close(s);
    free(long_topic);
}

/* ---- reading ---- */

static void fill10(cy_store *s)
{
    char p[8];
    for (int i = 1; i <= 10; i++) {
        snprintf(p, sizeof(p), "%d", i);
        append(s, i, "t", p); /* seq i * 1000 */
    }
    assert_int_equal(cy_store_commit(s), 0);
}

static void test_cy_store_events_read_after_limit(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    assert_string_equal(all_events(s), ""); /* empty log */
    fill10(s);
    assert_string_equal(read_log(s, 0, 3), "E1000 @1 t=t/1 p=1/1\n"
                                           "E2000 @2 t=t/1 p=2/1\n"
                                           "E3000 @3 t=t/1 p=3/1\n");
    assert_string_equal(read_log(s, 3000, 2), "E4000 @4 t=t/1 p=4/1\n"
                                              "E5000 @5 t=t/1 p=5/1\n");
    /* after need not be a seq in the log; strictly after */
    assert_string_equal(read_log(s, 3999, 1), "E4000 @4 t=t/1 p=4/1\n");
    assert_string_equal(read_log(s, 4000, 1), "E5000 @5 t=t/1 p=5/1\n");
    /* limit 0 reads one */
    assert_string_equal(read_log(s, 8000, 0), "E9000 @9 t=t/1 p=9/1\n");
    assert_string_equal(read_log(s, 9000, 100), "E10000 @10 t=t/1 p=10/2\n");
    assert_string_equal(read_log(s, 10000, 100), "");
    assert_string_equal(read_log(s, UINT64_C(1) << 62, 100), "");
    /* A callback's non-zero return stops the read and is returned. */
    rec r = {.stop_at = 2};
    assert_int_equal(cy_store_events_read(s, 0, 100, on_event, &r), 42);
    assert_int_equal(r.calls, 2);
    /* and leaves the statement reset: the next read starts over */
    assert_string_equal(read_log(s, 0, 1), "E1000 @1 t=t/1 p=1/1\n");
    assert_int_equal(cy_store_events_read(s, 0, 1, NULL, NULL), CY_EINVAL);
    assert_int_equal(cy_store_events_read(NULL, 0, 1, on_event, &r), CY_EINVAL);
    assert_int_equal(cy_store_pending(s), 0); /* reads are not writes */
    cy_store_close(s);
}

static void test_cy_store_events_tail(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    assert_string_equal(tail_log(s, 5), "");
    fill10(s);
    assert_string_equal(tail_log(s, 3), "E10000 @10 t=t/1 p=10/2\n"
                                        "E9000 @9 t=t/1 p=9/1\n"
                                        "E8000 @8 t=t/1 p=8/1\n");
    assert_string_equal(tail_log(s, 1), "E10000 @10 t=t/1 p=10/2\n");
    assert_string_equal(tail_log(s, 0), "");
    rec r = {0};
    assert_int_equal(cy_store_events_tail(s, UINT_MAX, on_event, &r), 0);
    assert_int_equal(r.calls, 10);
    assert_non_null(strstr(r.log, "E2000 @2 t=t/1 p=2/1\nE1000 @1 t=t/1 p=1/1\n"));
    rec stop = {.stop_at = 1};
    assert_int_equal(cy_store_events_tail(s, 5, on_event, &stop), 42);
    assert_string_equal(stop.log, "E10000 @10 t=t/1 p=10/2\n");
    assert_int_equal(cy_store_events_tail(s, 5, NULL, NULL), CY_EINVAL);
    /* The writer's own pending events are its newest. */
    append(s, 11, "t", "11");
    assert_string_equal(tail_log(s, 1), "E11000 @11 t=t/1 p=11/2\n");
    cy_store_close(s);
}

static void test_cy_store_event_get(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    rec r = {0};
    assert_int_equal(cy_store_event_get(s, 0, on_event, &r), CY_ENOENT);
    fill10(s);
    assert_int_equal(cy_store_event_get(s, 4000, on_event, &r), 0);
    assert_string_equal(r.log, "E4000 @4 t=t/1 p=4/1\n");
    uint64_t absent[] = {0, 1, 999, 4001, 10001, UINT64_C(1) << 62, UINT64_MAX};
    for (size_t i = 0; i < sizeof(absent) / sizeof(absent[0]); i++)
        assert_int_equal(cy_store_event_get(s, absent[i], on_event, &r), CY_ENOENT);
    assert_int_equal(r.calls, 1); /* no callback for an absent event */
    rec stop = {.stop_at = 1};
    assert_int_equal(cy_store_event_get(s, 1000, on_event, &stop), 42);
    assert_int_equal(cy_store_event_get(s, 1000, NULL, NULL), CY_EINVAL);
    /* A trimmed event is gone. */
    assert_int_equal(cy_store_events_trim(s, 3000, INT64_MAX, 0, 10), 2);
    assert_int_equal(cy_store_event_get(s, 2000, on_event, &r), CY_ENOENT);
    assert_int_equal(cy_store_event_get(s, 3000, on_event, &r), 0);
    cy_store_close(s);
}

static void test_cy_store_events_span(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    uint64_t first = 7, count = 7, after = 7;
    assert_int_equal(cy_store_events_span(s, 0, &first, &count, &after), 0);
    assert_int_equal(first, 0);
    assert_int_equal(count, 0);
    assert_int_equal(after, 0);
    fill10(s);
    assert_int_equal(cy_store_events_span(s, 0, &first, &count, &after), 0);
    assert_int_equal(first, 1000);
    assert_int_equal(count, 10);
    assert_int_equal(after, 10);
    assert_int_equal(cy_store_events_span(s, 3000, NULL, NULL, &after), 0);
    assert_int_equal(after, 7);
    assert_int_equal(cy_store_events_span(s, 3001, NULL, &count, &after), 0);
    assert_int_equal(after, 7);
    assert_int_equal(count, 10);
    assert_int_equal(cy_store_events_span(s, 10000, &first, NULL, &after), 0);
    assert_int_equal(after, 0);
    assert_int_equal(cy_store_events_span(s, 0, NULL, NULL, NULL), 0);
    assert_int_equal(cy_store_events_span(NULL, 0, NULL, NULL, NULL), CY_EINVAL);
    assert_int_equal(cy_store_events_trim(s, UINT64_C(1) << 62, INT64_MAX, 0, 4), 4);
    assert_int_equal(cy_store_events_span(s, 0, &first, &count, &after), 0);
    assert_int_equal(first, 5000);
    assert_int_equal(count, 6);
    assert_int_equal(after, 6);
    cy_store_close(s);
}

/* ---- trimming ---- */

#define LOOSE_BELOW (UINT64_C(1) << 62)

/* Only what every consumer has passed goes: seq < below, strictly. */
static void test_cy_store_events_trim_below(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    fill10(s);
    assert_int_equal(cy_store_events_trim(s, 0, INT64_MAX, 0, 100), 0);
    assert_int_equal(cy_store_events_trim(s, 1000, INT64_MAX, 0, 100), 0);
    assert_int_equal(cy_store_events_trim(s, 4000, INT64_MAX, 0, 100), 3);
    assert_int_equal(cy_store_events_trim(s, 4000, INT64_MAX, 0, 100), 0);
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(read_log(s, 0, 1), "E4000 @4 t=t/1 p=4/1\n");
    cy_store_close(s);
}

/* Past `below`, an event goes when it is old (at < at_before) even if it is
 * among the `keep` newest: by its time, not by its place. */
static void test_cy_store_events_trim_at_before(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    /* The clock stepped back for the third: old by time, new by place. */
    append(s, 100, "t", "a");
    append(s, 101, "t", "b");
    assert_int_equal(append(s, 1, "t", "c"), 101001);
    append(s, 102, "t", "d");
    append(s, 103, "t", "e");
    assert_int_equal(cy_store_commit(s), 0);
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, 1, 100, 100), 0); /* at 1 is not < 1 */
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, 2, 100, 100), 1);
    assert_string_equal(all_events(s), "E100000 @100 t=t/1 p=a/1\n"
                                       "E101000 @101 t=t/1 p=b/1\n"
                                       "E102000 @102 t=t/1 p=d/1\n"
                                       "E103000 @103 t=t/1 p=e/1\n");
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, 102, 100, 100), 2);
    /* INT64_MIN: nothing is old */
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MIN, 100, 100), 0);
    /* old, but not passed by every consumer */
    assert_int_equal(cy_store_events_trim(s, 102000, INT64_MAX, 100, 100), 0);
    assert_string_equal(all_events(s), "E102000 @102 t=t/1 p=d/1\n"
                                       "E103000 @103 t=t/1 p=e/1\n");
    cy_store_close(s);
}

/* Past `below`, events beyond the `keep` newest go, however recent. */
static void test_cy_store_events_trim_keep(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    fill10(s);
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MIN, 10, 100), 0);
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MIN, 11, 100), 0);
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MIN, UINT64_MAX, 100), 0);
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MIN, 9, 100), 1);
    /* below still holds: 3 beyond keep, only 1 passed */
    assert_int_equal(cy_store_events_trim(s, 3000, INT64_MIN, 6, 100), 1);
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MIN, 3, 100), 5);
    assert_string_equal(all_events(s), "E8000 @8 t=t/1 p=8/1\n"
                                       "E9000 @9 t=t/1 p=9/1\n"
                                       "E10000 @10 t=t/1 p=10/2\n");
    /* keep 0: all but the newest */
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MIN, 0, 100), 2);
    assert_string_equal(all_events(s), "E10000 @10 t=t/1 p=10/2\n");
    cy_store_close(s);
}

/* Either reason is enough (old OR beyond keep), and a row that is both
 * goes once. */
static void test_cy_store_events_trim_either_reason(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    fill10(s);
    /* old: at 1, 2; beyond the 7 newest: 1000..3000 */
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, 3, 7, 100), 3);
    /* old: at < 6 (4, 5); beyond the 5 newest: none left beyond 6000 */
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, 6, 5, 100), 2);
    assert_string_equal(read_log(s, 0, 1), "E6000 @6 t=t/1 p=6/1\n");
    cy_store_close(s);
}

/* max_rows bounds one call (a timer trims in slices), oldest first. */
static void test_cy_store_events_trim_max_rows(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    fill10(s);
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MAX, 0, 0), 0);
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MAX, 0, 3), 3);
    assert_string_equal(read_log(s, 0, 1), "E4000 @4 t=t/1 p=4/1\n");
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MAX, 0, 4), 4);
    assert_string_equal(read_log(s, 0, 1), "E8000 @8 t=t/1 p=8/1\n");
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MAX, 0, 4), 2); /* not the newest */
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MAX, 0, 4), 0);
    cy_store_close(s);
}

/* The newest is never trimmed, even alone and past every bound, and even
 * when it is pending in the batch. */
static void test_cy_store_events_trim_never_newest(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MAX, 0, 100), 0); /* empty */
    append(s, 5, "t", "only");
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MAX, 0, 100), 0);
    assert_int_equal(cy_store_commit(s), 0);
    assert_int_equal(cy_store_events_trim(s, 5001, INT64_MAX, 0, 100), 0);
    append(s, 6, "t", "pending");
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MAX, 0, 100), 1);
    assert_string_equal(all_events(s), "E6000 @6 t=t/1 p=pending/7\n");
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
}

/* ---- webhook state ---- */

static void test_cy_store_hook_state_put_upsert(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    assert_string_equal(states_log(s), "");
    put_state(s, "wh_b", 5, 1, "{\"x\":1}");
    put_state(s, "wh_a", 0, 0, "");
    assert_string_equal(states_log(s), "S wh_a c0 m0 d0 x0 \n"
                                       "S wh_b c5 m1 d1 x1 {\"x\":1}\n");
    cy_store_hook_state h = {"wh_b", UINT64_MAX, UINT64_C(1) << 63, 3, 4, "{\"x\":2}"};
    assert_int_equal(cy_store_hook_state_put(s, &h), 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    s = open_store(f);
    assert_string_equal(states_log(s), "S wh_a c0 m0 d0 x0 \n"
                                       "S wh_b c18446744073709551615 m9223372036854775808 d3 x4"
                                       " {\"x\":2}\n");
    rec stop = {.stop_at = 1};
    assert_int_equal(cy_store_hook_states(s, on_state, &stop), 42);
    assert_int_equal(cy_store_hook_states(s, NULL, NULL), CY_EINVAL);
    cy_store_hook_state bad = {NULL, 1, 1, 1, 1, "{}"};
    assert_int_equal(cy_store_hook_state_put(s, &bad), CY_EINVAL);
    bad = (cy_store_hook_state){"h", 1, 1, 1, 1, NULL};
    assert_int_equal(cy_store_hook_state_put(s, &bad), CY_EINVAL);
    assert_int_equal(cy_store_hook_state_put(s, NULL), CY_EINVAL);
    assert_int_equal(cy_store_hook_state_put(NULL, &h), CY_EINVAL);
    assert_int_equal(cy_store_pending(s), 0);
    cy_store_close(s);
}

/* Every column of a retry row round-trips; a second put of (hook, seq)
 * replaces the first; the list is by webhook then seq. */
static void test_cy_store_hook_retry_put_get_list_delete(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    static const uint8_t bin[] = {0, 0xff, 0};
    cy_store_hook_row r = {.hook = "wh_a",
                           .seq = 5000,
                           .at = -3,
                           .topic = "a\0b",
                           .topic_len = 3,
                           .payload = bin,
                           .payload_len = 3,
                           .attempts = UINT_MAX,
                           .next_at = INT64_MAX,
                           .trail = "[{\"s\":500}]"};
    assert_int_equal(cy_store_hook_retry_put(s, &r), 0);
    put_retry(s, "wh_a", 3000, "");
    put_retry(s, "wh_0", 9000, "z");
    put_retry(s, "wh_a", UINT64_C(1) << 62, "big");
    const char *all = "H wh_0 #9000 @9 t=events/t/8 p=z/1 a1 n99 []\n"
                      "H wh_a #3000 @3 t=events/t/8 p=/0 a1 n99 []\n"
                      "H wh_a #5000 @-3 t=a\\x00b/3 p=\\x00\\xff\\x00/3 a4294967295"
                      " n9223372036854775807 [{\"s\":500}]\n"
                      "H wh_a #4611686018427387904 @4611686018427387 t=events/t/8 p=big/3 a1"
                      " n99 []\n";
    assert_string_equal(retries_log(s), all);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    s = open_store(f);
    assert_string_equal(retries_log(s), all);

    rec g = {0};
    assert_int_equal(cy_store_hook_retry_get(s, "wh_a", 5000, on_row, &g), 0);
    assert_string_equal(g.log, "H wh_a #5000 @-3 t=a\\x00b/3 p=\\x00\\xff\\x00/3 a4294967295"
                               " n9223372036854775807 [{\"s\":500}]\n");
    assert_int_equal(cy_store_hook_retry_get(s, "wh_a", 5001, on_row, &g), CY_ENOENT);
    assert_int_equal(cy_store_hook_retry_get(s, "wh_0", 5000, on_row, &g), CY_ENOENT);
    assert_int_equal(cy_store_hook_retry_get(s, "wh_", 9000, on_row, &g), CY_ENOENT);
    assert_int_equal(g.calls, 1);
    assert_int_equal(cy_store_hook_retry_get(s, NULL, 1, on_row, &g), CY_EINVAL);
    assert_int_equal(cy_store_hook_retry_get(s, "wh_a", 1, NULL, NULL), CY_EINVAL);
    /* dead rows are another table */
    assert_int_equal(cy_store_hook_dead_get(s, "wh_a", 5000, on_row, &g), CY_ENOENT);

    /* replace */
    r.attempts = 2;
    r.trail = "[1,2]";
    r.payload_len = 0;
    assert_int_equal(cy_store_hook_retry_put(s, &r), 0);
    g = (rec){0};
    assert_int_equal(cy_store_hook_retry_get(s, "wh_a", 5000, on_row, &g), 0);
    assert_string_equal(g.log, "H wh_a #5000 @-3 t=a\\x00b/3 p=/0 a2 n9223372036854775807 [1,2]\n");

    assert_int_equal(cy_store_hook_retry_delete(s, "wh_a", 5000), 0);
    assert_int_equal(cy_store_hook_retry_delete(s, "wh_a", 5000), 0); /* absent: fine */
    assert_int_equal(cy_store_hook_retry_delete(s, "wh_nope", 1), 0);
    assert_int_equal(cy_store_hook_retry_get(s, "wh_a", 5000, on_row, &g), CY_ENOENT);
    assert_int_equal(cy_store_hook_retry_delete(s, NULL, 1), CY_EINVAL);
    assert_string_equal(retries_log(s), "H wh_0 #9000 @9 t=events/t/8 p=z/1 a1 n99 []\n"
                                        "H wh_a #3000 @3 t=events/t/8 p=/0 a1 n99 []\n"
                                        "H wh_a #4611686018427387904 @4611686018427387"
                                        " t=events/t/8 p=big/3 a1 n99 []\n");
    rec stop = {.stop_at = 2};
    assert_int_equal(cy_store_hook_retries(s, on_row, &stop), 42);
    assert_int_equal(stop.calls, 2);
    assert_int_equal(cy_store_hook_retries(s, NULL, NULL), CY_EINVAL);
    cy_store_close(s);
}

static void test_cy_store_hook_row_einval(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    cy_store_hook_row good = row("h", 1, "p");
    cy_store_hook_row bad[5];
    for (int i = 0; i < 5; i++)
        bad[i] = good;
    bad[0].hook = NULL;
    bad[1].topic = NULL;
    bad[2].payload = NULL;
    bad[3].trail = NULL;
    bad[4].payload = NULL;
    bad[4].payload_len = 0; /* fine: empty */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(cy_store_hook_retry_put(s, &bad[i]), CY_EINVAL);
        assert_int_equal(cy_store_hook_dead_put(s, &bad[i]), CY_EINVAL);
    }
    assert_int_equal(cy_store_hook_retry_put(s, NULL), CY_EINVAL);
    assert_int_equal(cy_store_hook_dead_put(NULL, &good), CY_EINVAL);
    assert_int_equal(cy_store_hook_forget(s, NULL), CY_EINVAL);
    assert_int_equal(cy_store_hook_dead_delete(s, NULL, 1), CY_EINVAL);
    assert_int_equal(cy_store_pending(s), 0); /* nothing refused reached the batch */
    assert_int_equal(cy_store_hook_retry_put(s, &bad[4]), 0);
    assert_int_equal(cy_store_hook_dead_put(s, &bad[4]), 0);
    assert_int_equal(cy_store_pending(s), 2);
    rec g = {0};
    assert_int_equal(cy_store_hook_dead_get(s, "h", 1, on_row, &g), 0);
    assert_string_equal(g.log, "H h #1 @0 t=events/t/8 p=/0 a1 n99 []\n");
    cy_store_close(s);
}

static void test_cy_store_hook_dead_list_get_after(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    assert_string_equal(dead_log(s, "a", 0, 10), "");
    for (uint64_t seq = 1000; seq <= 5000; seq += 1000)
        put_dead(s, "a", seq, "x");
    put_dead(s, "b", 2500, "y");
    put_dead(s, "ab", 3000, "z");
    assert_int_equal(cy_store_commit(s), 0);

    assert_string_equal(dead_log(s, "a", 0, 2), "H a #1000 @1 t=events/t/8 p=x/1 a1 n99 []\n"
                                                "H a #2000 @2 t=events/t/8 p=x/1 a1 n99 []\n");
    assert_string_equal(dead_log(s, "a", 2000, 100), "H a #3000 @3 t=events/t/8 p=x/1 a1 n99 []\n"
                                                     "H a #4000 @4 t=events/t/8 p=x/1 a1 n99 []\n"
                                                     "H a #5000 @5 t=events/t/8 p=x/1 a1 n99 []\n");
    assert_string_equal(dead_log(s, "a", 2001, 0), "H a #3000 @3 t=events/t/8 p=x/1 a1 n99 []\n");
    assert_string_equal(dead_log(s, "a", 5000, 10), "");
    assert_string_equal(dead_log(s, "b", 0, 10), "H b #2500 @2 t=events/t/8 p=y/1 a1 n99 []\n");
    assert_string_equal(dead_log(s, "", 0, 10), "");
    assert_string_equal(dead_log(s, "A", 0, 10), ""); /* exact, case and all */
    rec stop = {.stop_at = 1};
    assert_int_equal(cy_store_hook_dead_list(s, "a", 0, 10, on_row, &stop), 42);
    assert_int_equal(cy_store_hook_dead_list(s, NULL, 0, 10, on_row, &stop), CY_EINVAL);
    assert_int_equal(cy_store_hook_dead_list(s, "a", 0, 10, NULL, NULL), CY_EINVAL);

    rec g = {0};
    assert_int_equal(cy_store_hook_dead_get(s, "b", 2500, on_row, &g), 0);
    assert_string_equal(g.log, "H b #2500 @2 t=events/t/8 p=y/1 a1 n99 []\n");
    assert_int_equal(cy_store_hook_dead_get(s, "a", 2500, on_row, &g), CY_ENOENT);
    assert_int_equal(cy_store_hook_retry_get(s, "b", 2500, on_row, &g), CY_ENOENT);

    assert_string_equal(dead_after_log(s, 0), "D a #1000\n"
                                              "D a #2000\n"
                                              "D a #3000\n"
                                              "D a #4000\n"
                                              "D a #5000\n"
                                              "D ab #3000\n"
                                              "D b #2500\n");
    assert_string_equal(dead_after_log(s, 2500), "D a #3000\n"
                                                 "D a #4000\n"
                                                 "D a #5000\n"
                                                 "D ab #3000\n");
    assert_string_equal(dead_after_log(s, 5000), "");
    assert_int_equal(cy_store_hook_dead_after(s, 0, NULL, NULL), CY_EINVAL);
    rec stop2 = {.stop_at = 3};
    assert_int_equal(cy_store_hook_dead_after(s, 0, on_dead_seq, &stop2), 42);
    assert_int_equal(stop2.calls, 3);

    assert_int_equal(cy_store_hook_dead_delete(s, "a", 3000), 0);
    assert_int_equal(cy_store_hook_dead_delete(s, "a", 3000), 0);
    assert_string_equal(dead_after_log(s, 2500), "D a #4000\n"
                                                 "D a #5000\n"
                                                 "D ab #3000\n");
    cy_store_close(s);
}

/* The replay pattern (webhooks/defs.c): while listing a webhook's dead
 * letters, each one is moved to the retry table. Every row is seen once. */
static int move_to_retry(void *ctx, const cy_store_hook_row *r)
{
    cy_store *s = ctx;
    cy_store_hook_row copy = *r;
    copy.attempts = 0;
    assert_int_equal(cy_store_hook_retry_put(s, &copy), 0);
    assert_int_equal(cy_store_hook_dead_delete(s, r->hook, r->seq), 0);
    return 0;
}

static void test_cy_store_hook_dead_list_callback_moves_rows(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    for (uint64_t seq = 1; seq <= 50; seq++)
        put_dead(s, "a", seq * 1000, "x");
    assert_int_equal(cy_store_commit(s), 0); /* the list then runs outside a batch */
    assert_int_equal(cy_store_hook_dead_list(s, "a", 0, 1000, move_to_retry, s), 0);
    assert_int_equal(cy_store_pending(s), 100);
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(dead_log(s, "a", 0, 1000), "");
    rec r = {0};
    assert_int_equal(cy_store_hook_retries(s, on_row, &r), 0);
    assert_int_equal(r.calls, 50);
    cy_store_close(s);
}

/* Forget takes one webhook's state, retries and dead letters, and nothing
 * of any other webhook, not even of one whose id starts with its id. */
static void test_cy_store_hook_forget_one_hook_only(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    const char *hooks[] = {"a", "ab", "b", "a%", "_"};
    for (size_t i = 0; i < 5; i++) {
        put_state(s, hooks[i], 1, 1, "{}");
        put_retry(s, hooks[i], 1000, "r");
        put_dead(s, hooks[i], 2000, "d");
    }
    assert_int_equal(cy_store_commit(s), 0);
    size_t before = cy_store_pending(s);
    assert_int_equal(cy_store_hook_forget(s, "a"), 0);
    assert_true(cy_store_pending(s) > before); /* part of the batch */
    assert_int_equal(cy_store_hook_forget(s, "_"), 0);
    assert_int_equal(cy_store_hook_forget(s, "nobody"), 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    s = open_store(f);
    assert_string_equal(states_log(s), "S a% c1 m1 d1 x1 {}\n"
                                       "S ab c1 m1 d1 x1 {}\n"
                                       "S b c1 m1 d1 x1 {}\n");
    assert_string_equal(retries_log(s), "H a% #1000 @1 t=events/t/8 p=r/1 a1 n99 []\n"
                                        "H ab #1000 @1 t=events/t/8 p=r/1 a1 n99 []\n"
                                        "H b #1000 @1 t=events/t/8 p=r/1 a1 n99 []\n");
    assert_string_equal(dead_after_log(s, 0), "D a% #2000\n"
                                              "D ab #2000\n"
                                              "D b #2000\n");
    cy_store_close(s);
}

/* ---- group commit ---- */

static void test_cy_store_events_pending_counts(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    append(s, 1, "t", "x");
    assert_int_equal(cy_store_pending(s), 1);
    put_state(s, "h", 1000, 1, "{}");
    put_retry(s, "h", 1000, "x");
    put_dead(s, "h", 1000, "x");
    assert_int_equal(cy_store_pending(s), 4);
    assert_int_equal(cy_store_hook_retry_delete(s, "h", 1000), 0);
    assert_int_equal(cy_store_hook_dead_delete(s, "h", 1000), 0);
    assert_int_equal(cy_store_pending(s), 6);
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MAX, 0, 10), 0);
    assert_int_equal(cy_store_pending(s), 7);
    /* reads are not writes */
    rec r = {0};
    assert_int_equal(cy_store_events_read(s, 0, 10, on_event, &r), 0);
    assert_int_equal(cy_store_events_tail(s, 10, on_event, &r), 0);
    assert_int_equal(cy_store_event_get(s, 1000, on_event, &r), 0);
    assert_int_equal(cy_store_events_span(s, 0, NULL, NULL, NULL), 0);
    assert_int_equal(cy_store_hook_states(s, on_state, &r), 0);
    assert_int_equal(cy_store_hook_retries(s, on_row, &r), 0);
    assert_int_equal(cy_store_hook_dead_list(s, "h", 0, 10, on_row, &r), 0);
    assert_int_equal(cy_store_hook_dead_after(s, 0, on_dead_seq, &r), 0);
    assert_int_equal(cy_store_pending(s), 7);
    assert_int_equal(cy_store_commit(s), 0);
    assert_int_equal(cy_store_pending(s), 0);
    /* reads outside a batch open none */
    assert_int_equal(cy_store_events_read(s, 0, 10, on_event, &r), 0);
    assert_int_equal(cy_store_pending(s), 0);
    cy_store_close(s);
}

/* Another connection sees the batch once it commits, not before. */
static void test_cy_store_events_commit_visibility(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    append(s, 1, "t", "committed");
    assert_int_equal(cy_store_commit(s), 0);
    append(s, 2, "t", "pending");
    put_state(s, "h", 2000, 1, "{}");
    put_retry(s, "h", 2000, "x");
    put_dead(s, "h", 2000, "x");
    cy_store *other = open_store(f);
    assert_int_equal(cy_store_event_last(other), 1000);
    assert_string_equal(all_events(other), "E1000 @1 t=t/1 p=committed/9\n");
    assert_string_equal(states_log(other), "");
    assert_string_equal(retries_log(other), "");
    assert_string_equal(dead_after_log(other, 0), "");
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(all_events(other), "E1000 @1 t=t/1 p=committed/9\n"
                                           "E2000 @2 t=t/1 p=pending/7\n");
    assert_string_equal(states_log(other), "S h c2000 m1 d1 x1 {}\n");
    assert_string_equal(dead_after_log(other, 0), "D h #2000\n");
    cy_store_close(other);
    cy_store_close(s);
}

/* A batch whose last write fails (a trigger refuses a dead letter, the
 * transaction stays open) loses every write of it: events, state, retries,
 * a trim, a forget, and a session beside them. Earlier batches stay. */
static void test_cy_store_events_failed_batch_loses_all(void **state)
{
    fixture *f = *state;
    cy_store_close(open_store(f));
    add_boom_trigger(f, "hook_dead", "hook", "ABORT");
    cy_store *s = open_store(f);
    for (int i = 1; i <= 3; i++)
        append(s, i, "t", "kept");
    put_state(s, "old", 1, 1, "{}");
    put_dead(s, "old", 1000, "d");
    assert_int_equal(cy_store_commit(s), 0);

    append(s, 4, "t", "lost");
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MAX, 0, 10), 3);
    put_state(s, "new", 4000, 1, "{}");
    put_retry(s, "new", 4000, "x");
    assert_int_equal(cy_store_hook_forget(s, "old"), 0);
    cy_store_session sess = {"c", 5, 60, 0};
    assert_int_equal(cy_store_session_put(s, &sess), 0);
    cy_store_hook_row boom = row("boom", 4000, "x");
    assert_int_equal(cy_store_hook_dead_put(s, &boom), CY_ESTORE);
    assert_int_equal(cy_store_commit(s), CY_ESTORE);

    const char *kept = "E1000 @1 t=t/1 p=kept/4\n"
                       "E2000 @2 t=t/1 p=kept/4\n"
                       "E3000 @3 t=t/1 p=kept/4\n";
    assert_string_equal(all_events(s), kept);
    assert_string_equal(states_log(s), "S old c1 m1 d1 x1 {}\n");
    assert_string_equal(retries_log(s), "");
    assert_string_equal(dead_after_log(s, 0), "D old #1000\n");
    cy_store_close(s);
    s = open_store(f);
    assert_string_equal(all_events(s), kept);
    assert_int_equal(cy_store_event_last(s), 3000);
    cy_store_close(s);
}

/* The child commits a batch of events and webhook state, starts another
 * and is killed (as a hung shard is): the file holds the first batch only,
 * and the reopened store numbers on from its newest event. */
static void test_cy_store_events_survive_sigkill(void **state)
{
    fixture *f = *state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        cy_store *s;
        if (cy_store_open(f->path, false, &s)) _exit(10);
        cy_store_hook_state h = {"h", 1000, 1, 1, 0, "{}"};
        if (cy_store_event_append(s, 1, "t", 1, (const uint8_t *)"a", 1, NULL) ||
            cy_store_event_append(s, 2, "t", 1, (const uint8_t *)"b", 1, NULL) ||
            cy_store_hook_state_put(s, &h) || cy_store_commit(s))
            _exit(11);
        h.cursor = 3000;
        if (cy_store_event_append(s, 3, "t", 1, (const uint8_t *)"c", 1, NULL) ||
            cy_store_hook_state_put(s, &h) || cy_store_events_trim(s, 5000, INT64_MAX, 0, 9) != 2)
            _exit(12);
        if (write(fds[1], "k", 1) != 1) _exit(9);
        for (;;)
            pause();
    }
    close(fds[1]);
    char c;
    if (read(fds[0], &c, 1) == 1) kill(pid, SIGKILL);
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFSIGNALED(status)) fail_msg("child exited with %d", WEXITSTATUS(status));
    /* A reader first: the writer's WAL and index are as the kill left them. */
    cy_store *r = open_reader(f);
    assert_string_equal(all_events(r), "E1000 @1 t=t/1 p=a/1\n"
                                       "E2000 @2 t=t/1 p=b/1\n");
    cy_store_close(r);
    cy_store *s = open_store(f);
    assert_string_equal(all_events(s), "E1000 @1 t=t/1 p=a/1\n"
                                       "E2000 @2 t=t/1 p=b/1\n");
    assert_string_equal(states_log(s), "S h c1000 m1 d1 x0 {}\n");
    assert_int_equal(cy_store_event_last(s), 2000);
    assert_int_equal(append(s, 1, "t", "d"), 2001);
    cy_store_close(s);
}

/* The event paths allocate nothing of cyan's. */
static void test_cy_store_events_no_alloc(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    cy_alloc_fail_after(0);
    append(s, 1, "t", "x");
    put_state(s, "h", 1, 1, "{}");
    put_retry(s, "h", 1000, "x");
    put_dead(s, "h", 1000, "x");
    assert_int_equal(cy_store_events_trim(s, LOOSE_BELOW, INT64_MAX, 0, 10), 0);
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(all_events(s), "E1000 @1 t=t/1 p=x/1\n");
    assert_int_equal(cy_store_hook_forget(s, "h"), 0);
    assert_int_equal(cy_store_commit(s), 0);
    cy_alloc_fail_after(-1);
    cy_store_close(s);
}

/* ---- the reader ---- */

static int count_sessions(void *ctx, const cy_store_session *s)
{
    (void)s;
    ++*(int *)ctx;
    return 0;
}

typedef struct mid_ctx {
    cy_store *writer;
    rec rec;
} mid_ctx;

static int commit_midway(void *ctx, const cy_store_event *e)
{
    mid_ctx *m = ctx;
    if (m->rec.calls == 0) {
        assert_int_equal(
            cy_store_event_append(m->writer, 2, "t", 1, (const uint8_t *)"mid", 3, NULL), 0);
        assert_int_equal(cy_store_commit(m->writer), 0);
    }
    return on_event(&m->rec, e);
}

/* A reader sees what the writer committed, never its open batch; each read
 * is a new snapshot, so a later commit shows at the next read. */
static void test_cy_store_open_reader_committed_only(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    append(s, 1, "t", "a");
    put_state(s, "h", 1000, 1, "{\"n\":1}");
    put_retry(s, "h", 1000, "r");
    put_dead(s, "h", 900, "d");
    assert_int_equal(cy_store_commit(s), 0);
    append(s, 2, "t", "b");
    put_state(s, "h", 2000, 2, "{\"n\":2}");
    assert_int_equal(cy_store_hook_retry_delete(s, "h", 1000), 0);
    put_dead(s, "h", 1000, "d2");

    cy_store *r = open_reader(f);
    assert_int_equal(cy_store_pending(r), 0);
    assert_string_equal(all_events(r), "E1000 @1 t=t/1 p=a/1\n");
    assert_string_equal(tail_log(r, 5), "E1000 @1 t=t/1 p=a/1\n");
    rec g = {0};
    assert_int_equal(cy_store_event_get(r, 2000, on_event, &g), CY_ENOENT);
    uint64_t first = 0, count = 0, after = 0;
    assert_int_equal(cy_store_events_span(r, 0, &first, &count, &after), 0);
    assert_int_equal(first, 1000);
    assert_int_equal(count, 1);
    assert_int_equal(after, 1);
    assert_string_equal(states_log(r), "S h c1000 m1 d1 x1 {\"n\":1}\n");
    assert_string_equal(retries_log(r), "H h #1000 @1 t=events/t/8 p=r/1 a1 n99 []\n");
    assert_string_equal(dead_log(r, "h", 0, 10), "H h #900 @0 t=events/t/8 p=d/1 a1 n99 []\n");
    assert_int_equal(cy_store_hook_dead_get(r, "h", 1000, on_row, &g), CY_ENOENT);
    assert_int_equal(cy_store_hook_retry_get(r, "h", 1000, on_row, &g), 0);

    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(tail_log(r, 1), "E2000 @2 t=t/1 p=b/1\n");
    assert_string_equal(states_log(r), "S h c2000 m2 d2 x2 {\"n\":2}\n");
    assert_string_equal(retries_log(r), "");
    assert_string_equal(dead_after_log(r, 950), "D h #1000\n");

    /* A writer's commit while a reader is inside a read: the read goes on
     * in its snapshot, the commit does not wait for it. */
    mid_ctx m = {.writer = s};
    assert_int_equal(cy_store_events_read(r, 0, 10, commit_midway, &m), 0);
    assert_string_equal(m.rec.log, "E1000 @1 t=t/1 p=a/1\n"
                                   "E2000 @2 t=t/1 p=b/1\n");
    assert_string_equal(tail_log(r, 1), "E2001 @2 t=t/1 p=mid/3\n");

    /* The reader holds no lock between reads: the writer goes on. */
    append(s, 3, "t", "c");
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(read_log(r, 2001, 10), "E3000 @3 t=t/1 p=c/1\n");
    cy_store_close(r);
    cy_store_close(s);
}

/* A reader opens a file whose writer is gone (the shard is restarting),
 * and the writer reopens it after the reader was there. */
static void test_cy_store_open_reader_writer_closed(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    append(s, 1, "t", "a");
    cy_store_close(s);
    cy_store *r = open_reader(f);
    assert_string_equal(all_events(r), "E1000 @1 t=t/1 p=a/1\n");
    /* A writer starts while the reader is open. */
    s = open_store(f);
    assert_int_equal(cy_store_event_last(s), 1000);
    append(s, 2, "t", "b");
    assert_int_equal(cy_store_commit(s), 0);
    assert_string_equal(tail_log(r, 1), "E2000 @2 t=t/1 p=b/1\n");
    cy_store_close(r);
    append(s, 3, "t", "c");
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);
    s = open_store(f);
    assert_int_equal(cy_store_event_last(s), 3000);
    cy_store_close(s);
}

static void test_cy_store_open_reader_missing(void **state)
{
    fixture *f = *state;
    cy_store *r = (cy_store *)1;
    assert_int_equal(cy_store_open_reader(f->path, &r), CY_ENOENT);
    assert_null(r);
    assert_false(file_exists(f->path)); /* a reader creates nothing */
    char path[160];
    snprintf(path, sizeof(path), "%s/nodir/shard-0.db", f->dir);
    r = (cy_store *)1;
    assert_int_equal(cy_store_open_reader(path, &r), CY_ENOENT);
    assert_null(r);
    assert_int_equal(cy_store_open_reader(NULL, &r), CY_EINVAL);
    assert_int_equal(cy_store_open_reader(f->path, NULL), CY_EINVAL);
    /* An empty file (a writer created it and has not written yet) has no
     * log yet either. */
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    fclose(fp);
    r = (cy_store *)1;
    assert_int_equal(cy_store_open_reader(f->path, &r), CY_ENOENT);
    assert_null(r);
}

/* A file that is not a database is not "no log yet": the reader says the
 * store failed, so a broken shard file is not shown as an empty one. */
static void test_cy_store_open_reader_not_a_database(void **state)
{
    fixture *f = *state;
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    for (int i = 0; i < 1000; i++)
        fputs("not a database, ", fp);
    fclose(fp);
    cy_store *r = (cy_store *)1;
    assert_int_equal(cy_store_open_reader(f->path, &r), CY_ESTORE);
    assert_null(r);
    r = (cy_store *)1;
    assert_int_equal(cy_store_open_reader(f->dir, &r), CY_ESTORE); /* a directory */
    assert_null(r);
}

static void test_cy_store_open_reader_alloc_fail(void **state)
{
    fixture *f = *state;
    cy_store_close(open_store(f));
    cy_store *r = (cy_store *)1;
    cy_alloc_fail_after(0);
    assert_int_equal(cy_store_open_reader(f->path, &r), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    assert_null(r);
}

/* Every write on a reader is refused before it touches anything. */
static void test_cy_store_open_reader_refuses_writes(void **state)
{
    fixture *f = *state;
    cy_store *s = open_store(f);
    append(s, 1, "t", "a");
    put_state(s, "h", 1, 1, "{}");
    put_retry(s, "h", 1000, "r");
    put_dead(s, "h", 1000, "d");
    cy_store_close(s);

    cy_store *r = open_reader(f);
    uint64_t seq = 9;
    assert_int_equal(cy_store_event_append(r, 5, "t", 1, NULL, 0, &seq), CY_EINVAL);
    assert_int_equal(seq, 9);
    assert_int_equal(cy_store_events_trim(r, LOOSE_BELOW, INT64_MAX, 0, 10), CY_EINVAL);
    cy_store_hook_state h = {"h", 5, 5, 5, 5, "{}"};
    assert_int_equal(cy_store_hook_state_put(r, &h), CY_EINVAL);
    cy_store_hook_row row2 = row("h", 2000, "x");
    assert_int_equal(cy_store_hook_retry_put(r, &row2), CY_EINVAL);
    assert_int_equal(cy_store_hook_dead_put(r, &row2), CY_EINVAL);
    assert_int_equal(cy_store_hook_retry_delete(r, "h", 1000), CY_EINVAL);
    assert_int_equal(cy_store_hook_dead_delete(r, "h", 1000), CY_EINVAL);
    assert_int_equal(cy_store_hook_forget(r, "h"), CY_EINVAL);
    assert_int_equal(cy_store_pending(r), 0);
    assert_int_equal(cy_store_commit(r), 0);
    /* The broker's writes fail too (the read-only connection refuses them). */
    cy_store_session sess = {"c", 5, 60, 0};
    assert_int_not_equal(cy_store_session_put(r, &sess), 0);
    cy_store_commit(r);
    cy_store_close(r);

    s = open_store(f);
    assert_string_equal(all_events(s), "E1000 @1 t=t/1 p=a/1\n");
    assert_string_equal(states_log(s), "S h c1 m1 d1 x1 {}\n");
    assert_string_equal(retries_log(s), "H h #1000 @1 t=events/t/8 p=r/1 a1 n99 []\n");
    assert_string_equal(dead_after_log(s, 0), "D h #1000\n");
    int n = 0;
    cy_store_loader sessions = {.session = count_sessions};
    assert_int_equal(cy_store_load(s, &sessions, &n), 0);
    assert_int_equal(n, 0);
    cy_store_close(s);
}

/* ---- version 3 files ---- */

/* The exact version 3 schema, as the cyan before the event log created it
 * (store.c at 9b5bda0). Do not edit: it is the input the migration must
 * take. */
static const char schema_v3[] = "CREATE TABLE IF NOT EXISTS sessions("
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
                                " expiry_at INTEGER NOT NULL,"
                                " ts INTEGER NOT NULL,"
                                " owner TEXT);"
                                "CREATE TABLE IF NOT EXISTS outbox("
                                " peer INTEGER NOT NULL,"
                                " seq INTEGER NOT NULL,"
                                " frame BLOB NOT NULL,"
                                " PRIMARY KEY(peer, seq)) WITHOUT ROWID;"
                                "CREATE TABLE IF NOT EXISTS peers("
                                " peer INTEGER PRIMARY KEY,"
                                " last_sent INTEGER NOT NULL,"
                                " last_applied INTEGER NOT NULL);"
                                "PRAGMA user_version = 3;";

/* A version 3 file with a row in each table, in WAL mode with incremental
 * auto-vacuum, as cyan left it. */
static void make_v3(fixture *f)
{
    sql_exec(f, "PRAGMA auto_vacuum = INCREMENTAL");
    sql_exec(f, "PRAGMA journal_mode = WAL");
    sql_exec(f, schema_v3);
    sql_exec(f, "INSERT INTO sessions VALUES('c', 5, 60, 0);"
                "INSERT INTO subs VALUES('c', 'a/#', 1, 0);"
                "INSERT INTO msgs VALUES(1, 'c', 't', x'6d', NULL, 1, 0, 0, 0, 0, NULL);"
                "INSERT INTO inq2 VALUES('c', 9);"
                "INSERT INTO retained VALUES('r/1', x'7600', NULL, 1, 5, 77, 'dev');"
                "INSERT INTO outbox VALUES(2, 4, x'6672');"
                "INSERT INTO peers VALUES(2, 4, 3);");
}

static int count_any(void *ctx)
{
    return ++*(int *)ctx, 0;
}
static int count_sub(void *ctx, const char *c, const char *f, uint8_t o, uint32_t i)
{
    (void)c, (void)f, (void)o, (void)i;
    return count_any(ctx);
}
static int count_msg(void *ctx, const char *c, const cy_store_msg *m)
{
    (void)c, (void)m;
    return count_any(ctx);
}
static int count_inq2(void *ctx, const char *c, uint16_t p)
{
    (void)c, (void)p;
    return count_any(ctx);
}
static int count_retained(void *ctx, const cy_store_msg *m)
{
    assert_int_equal(m->ts, 77);
    assert_int_equal(m->owner_len, 3);
    return count_any(ctx);
}
static int count_peer(void *ctx, unsigned p, uint64_t s, uint64_t a)
{
    assert_int_equal(p, 2);
    assert_int_equal(s, 4);
    assert_int_equal(a, 3);
    return count_any(ctx);
}
static int count_outbox(void *ctx, unsigned p, uint64_t seq, const uint8_t *fr, size_t len)
{
    (void)p, (void)seq, (void)fr;
    assert_int_equal(len, 2);
    return count_any(ctx);
}

static const cy_store_loader counting = {count_sessions, count_sub,  count_msg,   count_inq2,
                                         count_retained, count_peer, count_outbox};

/* A reader refuses a version 3 file (its shard not restarted since the
 * upgrade) as "no log yet", and changes nothing in it. */
static void test_cy_store_open_reader_v3(void **state)
{
    fixture *f = *state;
    make_v3(f);
    cy_store *r = (cy_store *)1;
    assert_int_equal(cy_store_open_reader(f->path, &r), CY_ENOENT);
    assert_null(r);
    assert_int_equal(sql_int(f, "PRAGMA user_version"), 3);
    assert_int_equal(sql_int(f, "SELECT count(*) FROM sqlite_schema WHERE name = 'events'"), 0);
}

/* cy_store_open takes a version 3 file to version 4 (and on to the
 * current one): the four tables appear, as a new file has them, and every
 * old row stays. */
static void test_cy_store_open_migrates_v3(void **state)
{
    fixture *f = *state;
    make_v3(f);
    cy_store *s = open_store(f);
    assert_int_equal(sql_int(f, "PRAGMA user_version"), 6);
    int n = 0;
    assert_int_equal(cy_store_load(s, &counting, &n), 0);
    assert_int_equal(n, 7);
    assert_int_equal(cy_store_event_last(s), 0);
    assert_string_equal(all_events(s), "");
    append(s, 1, "t", "x");
    put_state(s, "h", 1000, 1, "{}");
    put_retry(s, "h", 1000, "r");
    put_dead(s, "h", 1000, "d");
    assert_int_equal(cy_store_commit(s), 0);
    cy_store_close(s);

    /* The same tables, column for column, as a new file's. */
    char path[160];
    snprintf(path, sizeof(path), "%s/new.db", f->dir);
    cy_store *fresh = NULL;
    assert_int_equal(cy_store_open(path, false, &fresh), 0);
    cy_store_close(fresh);
    char sql[512];
    snprintf(sql, sizeof(sql),
             "ATTACH '%s' AS n; CREATE TEMP TABLE same AS SELECT count(*) AS c"
             " FROM main.sqlite_schema m JOIN n.sqlite_schema x USING(name) WHERE m.sql = x.sql"
             " AND name IN ('events', 'hook_state', 'hook_retry', 'hook_dead')",
             path);
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT c FROM same", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 4);
    sqlite3_finalize(st);
    sqlite3_close(db);
    unlink(path);
    snprintf(path, sizeof(path), "%s/new.db-wal", f->dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/new.db-shm", f->dir);
    unlink(path);

    /* Reopened: nothing more to migrate, everything there, readable by a
     * reader too. */
    s = open_store(f);
    n = 0;
    assert_int_equal(cy_store_load(s, &counting, &n), 0);
    assert_int_equal(n, 7);
    assert_int_equal(cy_store_event_last(s), 1000);
    cy_store_close(s);
    cy_store *r = open_reader(f);
    assert_string_equal(all_events(r), "E1000 @1 t=t/1 p=x/1\n");
    assert_string_equal(states_log(r), "S h c1000 m1 d1 x1 {}\n");
    cy_store_close(r);
}

/* A migration that fails halfway (an index named hook_dead makes the last
 * CREATE TABLE fail after the first three succeeded) leaves the file
 * exactly at version 3, still "no log yet" to a reader; with the obstacle
 * gone the same file migrates. */
static void test_cy_store_open_migration_v4_atomic(void **state)
{
    fixture *f = *state;
    make_v3(f);
    sql_exec(f, "CREATE INDEX hook_dead ON sessions(version)");
    cy_store *s = (cy_store *)1;
    assert_int_equal(cy_store_open(f->path, false, &s), CY_ESTORE);
    assert_null(s);
    assert_int_equal(sql_int(f, "PRAGMA user_version"), 3);
    assert_int_equal(sql_int(f, "SELECT count(*) FROM sqlite_schema WHERE name IN"
                                " ('events', 'hook_state', 'hook_retry')"),
                     0);
    cy_store *r = (cy_store *)1;
    assert_int_equal(cy_store_open_reader(f->path, &r), CY_ENOENT);
    assert_null(r);
    sql_exec(f, "DROP INDEX hook_dead");
    s = open_store(f);
    int n = 0;
    assert_int_equal(cy_store_load(s, &counting, &n), 0);
    assert_int_equal(n, 7);
    cy_store_close(s);
    assert_int_equal(sql_int(f, "PRAGMA user_version"), 6);
    cy_store_close(open_reader(f));
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_cy_store_event_append_seq_from_clock),
        T(test_cy_store_event_append_clock_steps_back),
        T(test_cy_store_event_append_burst_one_ms),
        T(test_cy_store_event_append_survives_reopen),
        T(test_cy_store_event_seq_survives_trim_of_everything),
        T(test_cy_store_event_append_failure_keeps_seq),
        T(test_cy_store_event_append_failure_rolled_back),
        T(test_cy_store_event_append_busy),
        T(test_cy_store_event_append_einval),
        T(test_cy_store_event_append_seq_below_2_63),
        T(test_cy_store_event_empty_round_trip),
        T(test_cy_store_event_bytes_round_trip),
        T(test_cy_store_events_read_after_limit),
        T(test_cy_store_events_tail),
        T(test_cy_store_event_get),
        T(test_cy_store_events_span),
        T(test_cy_store_events_trim_below),
        T(test_cy_store_events_trim_at_before),
        T(test_cy_store_events_trim_keep),
        T(test_cy_store_events_trim_either_reason),
        T(test_cy_store_events_trim_max_rows),
        T(test_cy_store_events_trim_never_newest),
        T(test_cy_store_hook_state_put_upsert),
        T(test_cy_store_hook_retry_put_get_list_delete),
        T(test_cy_store_hook_row_einval),
        T(test_cy_store_hook_dead_list_get_after),
        T(test_cy_store_hook_dead_list_callback_moves_rows),
        T(test_cy_store_hook_forget_one_hook_only),
        T(test_cy_store_events_pending_counts),
        T(test_cy_store_events_commit_visibility),
        T(test_cy_store_events_failed_batch_loses_all),
        T(test_cy_store_events_survive_sigkill),
        T(test_cy_store_events_no_alloc),
        T(test_cy_store_open_reader_committed_only),
        T(test_cy_store_open_reader_writer_closed),
        T(test_cy_store_open_reader_missing),
        T(test_cy_store_open_reader_not_a_database),
        T(test_cy_store_open_reader_alloc_fail),
        T(test_cy_store_open_reader_refuses_writes),
        T(test_cy_store_open_reader_v3),
        T(test_cy_store_open_migrates_v3),
        T(test_cy_store_open_migration_v4_atomic),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
