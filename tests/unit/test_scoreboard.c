/* Unit tests of src/health/scoreboard.c: creating, opening and refusing
 * scoreboard files, the shared view between two mappings, and the backlog
 * rule (only RUNNING peers count, never oneself, never below zero). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/cy_err.h"
#include "health/scoreboard.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];
static char path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/cy-sb-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    snprintf(path, sizeof(path), "%s/scoreboard", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    rmdir(dir);
    return 0;
}

static off_t file_size(const char *p)
{
    struct stat st;
    if (stat(p, &st) != 0) return -1;
    return st.st_size;
}

static void test_scoreboard_create_sizes_and_zeroes(void **state)
{
    (void)state;
    cy_scoreboard sb;
    assert_int_equal(cy_scoreboard_create(path, 4, &sb), 0);
    /* 4 shards and the monitor's slot after them. */
    assert_int_equal(sb.map_len, sizeof(cy_sb_header) + 5 * sizeof(cy_sb_slot));
    assert_int_equal(file_size(path), (off_t)sb.map_len);
    assert_true(sb.hdr->magic == CY_SB_MAGIC);
    assert_int_equal(sb.hdr->version, CY_SB_VERSION);
    assert_int_equal(sb.hdr->nshards, 4);
    assert_ptr_equal(cy_scoreboard_monitor(&sb), &sb.slots[4]);
    for (unsigned i = 0; i < 5; i++) {
        assert_int_equal(sb.slots[i].state, CY_SHARD_DOWN);
        assert_int_equal(sb.slots[i].pid, 0);
        assert_int_equal(sb.slots[i].progress, 0);
    }
    /* Slots are 8-byte aligned so the relaxed 64-bit stores are whole. */
    assert_int_equal((uintptr_t)sb.slots % 8, 0);
    cy_scoreboard_close(&sb);
    assert_null(sb.hdr);
    /* No temporary file left behind. */
    char tmp[200];
    snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid());
    assert_int_equal(access(tmp, F_OK), -1);
}

static void test_scoreboard_create_bad_count(void **state)
{
    (void)state;
    cy_scoreboard sb;
    assert_int_equal(cy_scoreboard_create(path, 0, &sb), CY_EINVAL);
    assert_null(sb.hdr);
    assert_int_equal(cy_scoreboard_create(path, CY_SB_MAX_SHARDS + 1, &sb), CY_EINVAL);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(cy_scoreboard_create(path, CY_SB_MAX_SHARDS, &sb), 0);
    cy_scoreboard_close(&sb);
}

static void test_scoreboard_create_bad_dir(void **state)
{
    (void)state;
    cy_scoreboard sb;
    assert_int_equal(cy_scoreboard_create("/nonexistent-cy/dir/scoreboard", 2, &sb), CY_EIO);
    assert_null(sb.hdr);
}

static void test_scoreboard_open_shares_pages(void **state)
{
    (void)state;
    cy_scoreboard a, b;
    assert_int_equal(cy_scoreboard_create(path, 3, &a), 0);
    assert_int_equal(cy_scoreboard_open(path, &b), 0);
    assert_int_equal(b.hdr->nshards, 3);
    assert_int_equal(b.map_len, a.map_len);
    cy_sb_store(&a.slots[2].heartbeat_ms, 12345);
    cy_sb_storeu(&b.slots[1].progress, 77);
    assert_int_equal(cy_sb_load(&b.slots[2].heartbeat_ms), 12345);
    assert_int_equal(cy_sb_loadu(&a.slots[1].progress), 77);
    cy_scoreboard_close(&b);
    cy_scoreboard_close(&a);
}

static void test_scoreboard_create_replaces_not_truncates(void **state)
{
    (void)state;
    /* A process still mapping the old file keeps its old pages. */
    cy_scoreboard old, fresh, seen;
    assert_int_equal(cy_scoreboard_create(path, 2, &old), 0);
    cy_sb_store(&old.slots[0].state, CY_SHARD_RUNNING);
    assert_int_equal(cy_scoreboard_create(path, 3, &fresh), 0);
    assert_int_equal(cy_sb_load(&old.slots[0].state), CY_SHARD_RUNNING);
    cy_sb_store(&old.slots[1].pid, 42); /* an orphan still writing */
    assert_int_equal(cy_scoreboard_open(path, &seen), 0);
    assert_int_equal(seen.hdr->nshards, 3);
    assert_int_equal(cy_sb_load(&seen.slots[0].state), CY_SHARD_DOWN);
    assert_int_equal(cy_sb_load(&seen.slots[1].pid), 0);
    cy_scoreboard_close(&seen);
    cy_scoreboard_close(&fresh);
    cy_scoreboard_close(&old);
}

static void write_at(const char *p, off_t off, const void *data, size_t len)
{
    int fd = open(p, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, data, len, off), (ssize_t)len);
    close(fd);
}

static void test_scoreboard_open_missing(void **state)
{
    (void)state;
    cy_scoreboard sb;
    assert_int_equal(cy_scoreboard_open(path, &sb), CY_ENOENT);
    assert_null(sb.hdr);
}

static void test_scoreboard_open_rejects_bad_magic(void **state)
{
    (void)state;
    cy_scoreboard sb;
    assert_int_equal(cy_scoreboard_create(path, 2, &sb), 0);
    cy_scoreboard_close(&sb);
    uint64_t bad = 0x1122334455667788ull;
    write_at(path, offsetof(cy_sb_header, magic), &bad, sizeof(bad));
    assert_int_equal(cy_scoreboard_open(path, &sb), CY_EINVAL);
    assert_null(sb.hdr);
}

static void test_scoreboard_open_rejects_bad_version(void **state)
{
    (void)state;
    cy_scoreboard sb;
    assert_int_equal(cy_scoreboard_create(path, 2, &sb), 0);
    cy_scoreboard_close(&sb);
    uint64_t v = CY_SB_VERSION - 1; /* a node of the previous binary */
    write_at(path, offsetof(cy_sb_header, version), &v, sizeof(v));
    assert_int_equal(cy_scoreboard_open(path, &sb), CY_EINVAL);
}

static void test_scoreboard_event_ring(void **state)
{
    (void)state;
    cy_scoreboard w, r;
    assert_int_equal(cy_scoreboard_create(path, 2, &w), 0);
    assert_int_equal(cy_scoreboard_open(path, &r), 0);
    cy_sb_event e;
    assert_false(cy_scoreboard_event_get(&r, 0, &e));
    assert_false(cy_scoreboard_event_get(&r, 1, &e)); /* not yet written */
    cy_scoreboard_event(&w, 111, CY_SB_EVENT_START, -1, 42, 0, -1, "cyan 0.1.0 started");
    assert_int_equal(r.hdr->event_seq, 1);
    assert_true(cy_scoreboard_event_get(&r, 1, &e));
    assert_int_equal(e.seq, 1);
    assert_int_equal(e.wall_ms, 111);
    assert_int_equal(e.kind, CY_SB_EVENT_START);
    assert_int_equal(e.shard, -1);
    assert_int_equal(e.pid, 42);
    assert_string_equal(e.text, "cyan 0.1.0 started");
    /* Wrap the ring: the first events are gone, the last CY_SB_EVENTS stay. */
    for (int i = 2; i <= CY_SB_EVENTS + 5; i++)
        cy_scoreboard_event(&w, 100 + i, CY_SB_EVENT_RESTART, i % 2, 1000 + i, i, CY_RESTART_HUNG,
                            NULL);
    assert_int_equal(r.hdr->event_seq, CY_SB_EVENTS + 5);
    assert_false(cy_scoreboard_event_get(&r, 1, &e));
    assert_false(cy_scoreboard_event_get(&r, 5, &e));
    assert_true(cy_scoreboard_event_get(&r, 6, &e));
    assert_int_equal(e.pid, 1006);
    assert_true(cy_scoreboard_event_get(&r, CY_SB_EVENTS + 5, &e));
    assert_int_equal(e.reason, CY_RESTART_HUNG);
    assert_string_equal(e.text, "");
    assert_false(cy_scoreboard_event_get(&r, CY_SB_EVENTS + 6, &e));
    cy_scoreboard_close(&r);
    cy_scoreboard_close(&w);
}

static void test_scoreboard_open_rejects_bad_count(void **state)
{
    (void)state;
    cy_scoreboard sb;
    assert_int_equal(cy_scoreboard_create(path, 2, &sb), 0);
    cy_scoreboard_close(&sb);
    uint64_t n = 0;
    write_at(path, offsetof(cy_sb_header, nshards), &n, sizeof(n));
    assert_int_equal(cy_scoreboard_open(path, &sb), CY_EINVAL);
    n = 3; /* more slots than the file holds */
    write_at(path, offsetof(cy_sb_header, nshards), &n, sizeof(n));
    assert_int_equal(cy_scoreboard_open(path, &sb), CY_EINVAL);
    n = 1000;
    write_at(path, offsetof(cy_sb_header, nshards), &n, sizeof(n));
    assert_int_equal(cy_scoreboard_open(path, &sb), CY_EINVAL);
}

static void test_scoreboard_open_rejects_bad_size(void **state)
{
    (void)state;
    cy_scoreboard sb;
    assert_int_equal(cy_scoreboard_create(path, 2, &sb), 0);
    size_t len = sb.map_len;
    cy_scoreboard_close(&sb);
    assert_int_equal(truncate(path, (off_t)len - 8), 0);
    assert_int_equal(cy_scoreboard_open(path, &sb), CY_EINVAL);
    assert_int_equal(truncate(path, (off_t)len + 8), 0);
    assert_int_equal(cy_scoreboard_open(path, &sb), CY_EINVAL);
    assert_int_equal(truncate(path, 10), 0); /* shorter than a header */
    assert_int_equal(cy_scoreboard_open(path, &sb), CY_EINVAL);
    assert_int_equal(truncate(path, 0), 0);
    assert_int_equal(cy_scoreboard_open(path, &sb), CY_EINVAL);
}

static void test_scoreboard_close_zeroed_and_twice(void **state)
{
    (void)state;
    cy_scoreboard sb;
    memset(&sb, 0, sizeof(sb));
    cy_scoreboard_close(&sb);
    assert_int_equal(cy_scoreboard_create(path, 1, &sb), 0);
    cy_scoreboard_close(&sb);
    cy_scoreboard_close(&sb);
    assert_int_equal(cy_scoreboard_backlog(&sb, 0), 0); /* closed: nothing */
}

static void test_scoreboard_backlog_counts_running_peers(void **state)
{
    (void)state;
    cy_scoreboard sb;
    assert_int_equal(cy_scoreboard_create(path, 4, &sb), 0);
    cy_sb_slot *s = sb.slots;
    for (unsigned i = 0; i < 4; i++)
        cy_sb_store(&s[i].state, CY_SHARD_RUNNING);
    assert_int_equal(cy_scoreboard_backlog(&sb, 0), 0);

    cy_sb_storeu(&s[0].queued, 5);       /* its own queue */
    cy_sb_storeu(&s[1].bus_sent[0], 10); /* peer 1: 3 unacked */
    cy_sb_storeu(&s[1].bus_acked[0], 7);
    cy_sb_storeu(&s[2].bus_sent[0], 4); /* peer 2: all acked */
    cy_sb_storeu(&s[2].bus_acked[0], 4);
    cy_sb_storeu(&s[3].bus_sent[0], 100); /* peer 3: 100 unacked */
    assert_int_equal(cy_scoreboard_backlog(&sb, 0), 5 + 3 + 100);

    /* Peers that are not RUNNING do not count. */
    cy_sb_store(&s[3].state, CY_SHARD_DOWN);
    assert_int_equal(cy_scoreboard_backlog(&sb, 0), 8);
    cy_sb_store(&s[3].state, CY_SHARD_STARTING);
    assert_int_equal(cy_scoreboard_backlog(&sb, 0), 8);
    cy_sb_store(&s[3].state, CY_SHARD_STOPPING);
    assert_int_equal(cy_scoreboard_backlog(&sb, 0), 8);

    /* Its own bus counters never count towards itself. */
    cy_sb_storeu(&s[0].bus_sent[0], 50);
    assert_int_equal(cy_scoreboard_backlog(&sb, 0), 8);

    /* More acked than sent (a reset between loads) is clamped, not wrapped. */
    cy_sb_storeu(&s[2].bus_acked[0], 9);
    assert_int_equal(cy_scoreboard_backlog(&sb, 0), 8);

    /* Other indexes see their own columns; out of range is 0. */
    cy_sb_storeu(&s[0].bus_sent[1], 2);
    assert_int_equal(cy_scoreboard_backlog(&sb, 1), 2);
    assert_int_equal(cy_scoreboard_backlog(&sb, 4), 0);
    assert_int_equal(cy_scoreboard_backlog(&sb, 1000), 0);

    /* The shard's own queue counts whatever its state. */
    cy_sb_store(&s[0].state, CY_SHARD_STARTING);
    assert_int_equal(cy_scoreboard_backlog(&sb, 0), 8);
    cy_scoreboard_close(&sb);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_scoreboard_create_sizes_and_zeroes),
        T(test_scoreboard_create_bad_count),
        T(test_scoreboard_create_bad_dir),
        T(test_scoreboard_open_shares_pages),
        T(test_scoreboard_create_replaces_not_truncates),
        T(test_scoreboard_open_missing),
        T(test_scoreboard_open_rejects_bad_magic),
        T(test_scoreboard_open_rejects_bad_version),
        T(test_scoreboard_event_ring),
        T(test_scoreboard_open_rejects_bad_count),
        T(test_scoreboard_open_rejects_bad_size),
        T(test_scoreboard_close_zeroed_and_twice),
        T(test_scoreboard_backlog_counts_running_peers),
    };
    return cmocka_run_group_tests_name("scoreboard", tests, NULL, NULL);
}
