/* Unit tests of src/core: buffers, the hash map, the config table, error
 * text and the allocation fault hook. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_config.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "core/cy_intern.h"
#include "core/cy_map.h"
#include "core/cy_str.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_cy_buf_append_consume(void **state)
{
    (void)state;
    cy_buf b;
    cy_buf_init(&b);
    for (int i = 0; i < 1000; i++) assert_int_equal(cy_buf_put_u16(&b, (uint16_t)i), 0);
    assert_int_equal(cy_buf_size(&b), 2000);
    assert_int_equal(cy_buf_head(&b)[0], 0);
    assert_int_equal(cy_buf_head(&b)[3], 1);
    cy_buf_consume(&b, 1998);
    assert_int_equal(cy_buf_size(&b), 2);
    assert_int_equal((cy_buf_head(&b)[0] << 8) | cy_buf_head(&b)[1], 999);
    cy_buf_consume(&b, 2);
    assert_int_equal(cy_buf_size(&b), 0);
    assert_int_equal(b.off, 0); /* empty buffers rewind */
    cy_buf_fini(&b);
    cy_buf_fini(&b); /* safe twice */
}

static void test_cy_buf_put_big_endian(void **state)
{
    (void)state;
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_buf_put_u32(&b, 0x01020304u), 0);
    assert_int_equal(cy_buf_put_u8(&b, 0xff), 0);
    const uint8_t want[] = {1, 2, 3, 4, 0xff};
    assert_memory_equal(cy_buf_head(&b), want, sizeof(want));
    cy_buf_fini(&b);
}

static void test_cy_buf_reserve_compacts(void **state)
{
    (void)state;
    cy_buf b;
    cy_buf_init(&b);
    uint8_t x[200] = {0};
    assert_int_equal(cy_buf_append(&b, x, sizeof(x)), 0);
    size_t cap = b.cap;
    cy_buf_consume(&b, 150);
    /* room exists once the consumed prefix is reclaimed: no growth */
    assert_int_equal(cy_buf_reserve(&b, cap - 60), 0);
    assert_int_equal(b.cap, cap);
    assert_int_equal(b.off, 0);
    assert_int_equal(cy_buf_size(&b), 50);
    cy_buf_fini(&b);
}

static void test_cy_buf_reserve_from_first_block(void **state)
{
    (void)state;
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_buf_reserve_from(&b, 1, 136), 0);
    assert_int_equal(b.cap, 136); /* the first block is what was asked */
    uint8_t x[200] = {0};
    assert_int_equal(cy_buf_append(&b, x, 100), 0);
    assert_int_equal(b.cap, 136);
    assert_int_equal(cy_buf_append(&b, x, 100), 0); /* then it doubles */
    assert_int_equal(b.cap, 272);
    assert_int_equal(cy_buf_reserve_from(&b, 1, 8), 0); /* only for a buffer with no memory */
    assert_int_equal(b.cap, 272);
    cy_buf_fini(&b);
    assert_int_equal(cy_buf_reserve_from(&b, 300, 100), 0); /* n beyond first: doubled to fit */
    assert_int_equal(b.cap, 400);
    cy_buf_fini(&b);
    assert_int_equal(cy_buf_reserve(&b, 1), 0); /* the default first block */
    assert_int_equal(b.cap, 256);
    cy_buf_fini(&b);
}

static void test_cy_buf_append_enomem_leaves_buffer(void **state)
{
    (void)state;
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_buf_append(&b, "abc", 3), 0);
    uint8_t big[1024];
    memset(big, 7, sizeof(big));
    cy_alloc_fail_after(0);
    assert_int_equal(cy_buf_append(&b, big, sizeof(big)), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    assert_int_equal(cy_buf_size(&b), 3);
    assert_memory_equal(cy_buf_head(&b), "abc", 3);
    cy_buf_fini(&b);
}

static void test_cy_buf_shrink_idle(void **state)
{
    (void)state;
    cy_buf b;
    cy_buf_init(&b);
    uint8_t big[8192] = {0};
    assert_int_equal(cy_buf_append(&b, big, sizeof(big)), 0);
    cy_buf_shrink(&b); /* not empty: kept */
    assert_non_null(b.data);
    cy_buf_consume(&b, sizeof(big));
    cy_buf_shrink(&b);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    cy_buf_fini(&b);
}

static void test_cy_map_put_get_del(void **state)
{
    (void)state;
    cy_map m;
    cy_map_init(&m);
    static char keys[500][16];
    for (int i = 0; i < 500; i++) {
        snprintf(keys[i], sizeof(keys[i]), "client-%d", i);
        assert_int_equal(cy_map_put(&m, keys[i], strlen(keys[i]), keys[i]), 0);
    }
    assert_int_equal(m.count, 500);
    assert_int_equal(cy_map_put(&m, keys[3], strlen(keys[3]), NULL), CY_EEXIST);
    for (int i = 0; i < 500; i++) assert_ptr_equal(cy_map_get(&m, keys[i], strlen(keys[i])), keys[i]);
    assert_null(cy_map_get(&m, "client-500", 10));
    assert_null(cy_map_get(&m, "client-1", 7)); /* prefix is not a match */
    for (int i = 0; i < 500; i += 2) assert_ptr_equal(cy_map_del(&m, keys[i], strlen(keys[i])), keys[i]);
    assert_null(cy_map_del(&m, keys[0], strlen(keys[0])));
    assert_int_equal(m.count, 250);
    for (int i = 1; i < 500; i += 2) assert_ptr_equal(cy_map_get(&m, keys[i], strlen(keys[i])), keys[i]);
    cy_map_fini(&m);
}

static void test_cy_map_put_enomem(void **state)
{
    (void)state;
    cy_map m;
    cy_map_init(&m);
    for (long n = 0; n < 3; n++) {
        cy_alloc_fail_after(n);
        int rc = cy_map_put(&m, "k", 1, &m);
        cy_alloc_fail_after(-1);
        if (rc == 0) break;
        assert_int_equal(rc, CY_ENOMEM);
        assert_int_equal(m.count, 0);
        assert_null(cy_map_get(&m, "k", 1));
    }
    assert_ptr_equal(cy_map_get(&m, "k", 1), &m);
    cy_map_fini(&m);
}

/* Entries come from the map's blocks: deleted ones are reused before a new
 * block is taken, across many blocks and rounds of churn, and every
 * surviving key still maps to its value (ASan: no block leaks at fini). */
static void test_cy_map_entries_reused(void **state)
{
    (void)state;
    cy_map m;
    cy_map_init(&m);
    static char keys[3000][16];
    for (int i = 0; i < 3000; i++) {
        snprintf(keys[i], sizeof(keys[i]), "dev-%d", i);
        assert_int_equal(cy_map_put(&m, keys[i], strlen(keys[i]), keys[i]), 0);
    }
    void *blocks = m.blocks;
    for (int round = 0; round < 5; round++) {
        for (int i = round % 2; i < 3000; i += 2)
            assert_ptr_equal(cy_map_del(&m, keys[i], strlen(keys[i])), keys[i]);
        assert_int_equal(m.count, 1500);
        for (int i = round % 2; i < 3000; i += 2)
            assert_int_equal(cy_map_put(&m, keys[i], strlen(keys[i]), keys[i]), 0);
        assert_ptr_equal(m.blocks, blocks); /* the freed entries served: no new block */
    }
    for (int i = 0; i < 3000; i++) assert_ptr_equal(cy_map_get(&m, keys[i], strlen(keys[i])), keys[i]);
    cy_map_fini(&m);
    assert_null(m.blocks);
    assert_int_equal(m.count, 0);
}

/* One shared copy per text, freed with its last reference; a failed
 * allocation returns NULL and leaves nothing behind. */
static void test_cy_intern_shares_and_frees(void **state)
{
    (void)state;
    char a[] = "fleet-user", b[] = "fleet-user";
    const char *x = cy_intern(a, strlen(a));
    const char *y = cy_intern(b, strlen(b));
    assert_non_null(x);
    assert_ptr_equal(x, y);
    assert_ptr_not_equal(x, a); /* a copy, not the caller's bytes */
    assert_string_equal(x, "fleet-user");
    const char *z = cy_intern("fleet-user2", 10); /* only the first 10 bytes */
    assert_ptr_equal(z, x);
    const char *w = cy_intern("other", 5);
    assert_ptr_not_equal(w, x);
    assert_int_equal(cy_intern_count(), 2);
    cy_intern_drop(x);
    cy_intern_drop(y);
    assert_int_equal(cy_intern_count(), 2); /* z still holds it */
    cy_intern_drop(z);
    assert_int_equal(cy_intern_count(), 1);
    cy_intern_drop(w);
    cy_intern_drop(NULL);
    assert_int_equal(cy_intern_count(), 0);
    const char *e = cy_intern("", 0);
    assert_non_null(e);
    assert_string_equal(e, "");
    cy_intern_drop(e);
    for (long n = 0; n < 3; n++) {
        cy_alloc_fail_after(n);
        const char *t = cy_intern("t", 1);
        cy_alloc_fail_after(-1);
        if (t) {
            cy_intern_drop(t);
            break;
        }
        assert_int_equal(cy_intern_count(), 0);
    }
    assert_int_equal(cy_intern_count(), 0);
}

static void count_each(void *ctx, void *v)
{
    (void)v;
    (*(int *)ctx)++;
}

static void test_cy_map_each_visits_all(void **state)
{
    (void)state;
    cy_map m;
    cy_map_init(&m);
    const char *k[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) assert_int_equal(cy_map_put(&m, k[i], 1, (void *)k[i]), 0);
    int n = 0;
    cy_map_each(&m, count_each, &n);
    assert_int_equal(n, 4);
    cy_map_fini(&m);
}

static void test_cy_config_defaults(void **state)
{
    (void)state;
    cy_config c;
    cy_config_defaults(&c);
    assert_string_equal(c.mqtt_listen, "127.0.0.1:1883"); /* the plain listeners: loopback */
    assert_string_equal(c.http_listen, "127.0.0.1:8080");
    assert_string_equal(c.ops_listen, "127.0.0.1:8081");
    assert_string_equal(c.coap_listen, "127.0.0.1:5683");
    assert_string_equal(c.mqtts_listen, "0.0.0.0:8883");
    assert_string_equal(c.tls_cert, "");
    assert_string_equal(c.tls_min_version, "1.2");
    assert_false(c.allow_anonymous);
    assert_int_equal(c.max_inflight, 32);
    assert_int_equal(c.max_packet_size, 1048576);
    assert_string_equal(c.store_sync, "normal");
}

static void test_cy_config_set_errors(void **state)
{
    (void)state;
    cy_config c;
    cy_config_defaults(&c);
    cy_config_error e;
    assert_int_equal(cy_config_set(&c, "max_inflight", "64", &e), 0);
    assert_int_equal(c.max_inflight, 64);
    assert_int_equal(cy_config_set(&c, "max_inflight", "0", &e), CY_ECONFIG);
    assert_non_null(strstr(e.msg, "max_inflight"));
    assert_int_equal(cy_config_set(&c, "max_inflight", "-1", &e), CY_ECONFIG);
    assert_int_equal(cy_config_set(&c, "max_inflight", "12x", &e), CY_ECONFIG);
    assert_int_equal(cy_config_set(&c, "max_inflight", "", &e), CY_ECONFIG);
    assert_int_equal(c.max_inflight, 64); /* unchanged by the failures */
    assert_int_equal(cy_config_set(&c, "allow_anonymous", "yes", &e), 0);
    assert_true(c.allow_anonymous);
    assert_int_equal(cy_config_set(&c, "allow_anonymous", "maybe", &e), CY_ECONFIG);
    assert_int_equal(cy_config_set(&c, "no_such_thing", "1", &e), CY_ECONFIG);
    assert_non_null(strstr(e.msg, "no_such_thing"));
    assert_int_equal(cy_config_set(&c, "store_sync", "sometimes", &e), CY_ECONFIG);
    assert_int_equal(cy_config_set(&c, "tls_min_version", "1.1", &e), CY_ECONFIG);
    assert_non_null(strstr(e.msg, "1.2 or 1.3"));
    assert_int_equal(cy_config_set(&c, "tls_min_version", "1.3", &e), 0);
    char longv[600];
    memset(longv, 'x', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = '\0';
    assert_int_equal(cy_config_set(&c, "data_dir", longv, &e), CY_ECONFIG);
    /* cors_origins: empty, "*", or origins; a refused value changes nothing. */
    assert_string_equal(c.cors_origins, "");
    const char *good[] = {"*",
                          " * ",
                          "https://app.example.com",
                          "https://app.example.com, http://localhost:3000",
                          "http://[::1]:8080,https://a-b.example",
                          ""};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_int_equal(cy_config_set(&c, "cors_origins", good[i], &e), 0);
    assert_int_equal(cy_config_set(&c, "cors_origins", "https://ok.example", &e), 0);
    const char *bad[] = {"app.example.com",
                         "https://app.example.com/",
                         "https://a.example/path",
                         "ftp://a.example",
                         "*, https://a.example",
                         "https://a.example,",
                         "https://",
                         "https://a.example:",
                         "https://a.example:123456",
                         "https://*.example.com",
                         "https://a b.example",
                         "null"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(cy_config_set(&c, "cors_origins", bad[i], &e), CY_ECONFIG);
        assert_non_null(strstr(e.msg, "cors_origins"));
    }
    assert_string_equal(c.cors_origins, "https://ok.example");
}

static char *write_tmp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/cyan-test-conf-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_cy_config_load_file(void **state)
{
    (void)state;
    cy_config c;
    cy_config_defaults(&c);
    cy_config_error e;
    char *p = write_tmp("# comment\n\n  max_queued = 7   # trailing comment\nlog_level=debug\n");
    assert_int_equal(cy_config_load(&c, p, &e), 0);
    assert_int_equal(c.max_queued, 7);
    assert_string_equal(c.log_level, "debug");
    unlink(p);
    p = write_tmp("max_queued = 7\nthis line is wrong\n");
    assert_int_equal(cy_config_load(&c, p, &e), CY_ECONFIG);
    assert_non_null(strstr(e.msg, ":2:"));
    unlink(p);
    assert_int_equal(cy_config_load(&c, "/nonexistent/cyan.conf", &e), CY_EIO);
}

/* A line is whole however long: a comment of 1500 bytes whose tail reads
 * "max_queued = 5" stays a comment (a 1024-byte fgets buffer once cut it
 * and read the tail as a line of its own: an unknown setting, or with the
 * cut just before the name, a setting changed from a comment). */
static void test_cy_config_long_line(void **state)
{
    (void)state;
    char text[2048];
    memset(text, 'x', sizeof(text));
    text[0] = '#';
    size_t n = 1500;
    memcpy(text + n, " max_queued = 5\n", 16);
    text[n + 16] = '\0';
    cy_config c;
    cy_config_defaults(&c);
    cy_config_error e;
    char *p = write_tmp(text);
    assert_int_equal(cy_config_load(&c, p, &e), 0);
    assert_int_equal(c.max_queued, 1000);
    unlink(p);
    /* The same with the setting right where the old buffer ended. */
    memset(text, 'x', sizeof(text));
    text[0] = '#';
    memcpy(text + 1023, "max_queued = 5\n", 15);
    text[1023 + 15] = '\0';
    p = write_tmp(text);
    assert_int_equal(cy_config_load(&c, p, &e), 0);
    assert_int_equal(c.max_queued, 1000);
    unlink(p);
    /* A long value is refused whole, naming its line, not cut in two. */
    memset(text, 'x', sizeof(text));
    memcpy(text, "data_dir = ", 11);
    text[1500] = '\0';
    p = write_tmp(text);
    assert_int_equal(cy_config_load(&c, p, &e), CY_ECONFIG);
    assert_non_null(strstr(e.msg, ":1: data_dir: value too long"));
    unlink(p);
}

static void test_cy_config_load_buf(void **state)
{
    (void)state;
    cy_config c;
    cy_config_defaults(&c);
    cy_config_error e;
    /* No newline at the end, CRLF lines, text not NUL-terminated. */
    static const char t[] = "max_queued = 7\r\nlog_level = debug\r\nmax_inflight=9XYZ";
    assert_int_equal(cy_config_load_buf(&c, t, sizeof(t) - 4, "t.conf", &e), 0);
    assert_int_equal(c.max_queued, 7);
    assert_string_equal(c.log_level, "debug");
    assert_int_equal(c.max_inflight, 9);
    assert_int_equal(cy_config_load_buf(&c, NULL, 0, NULL, &e), 0);
    /* A NUL byte in a line is refused, naming the text and the line; the
     * lines before it are applied. */
    static const char z[] = "max_queued = 8\nmax_inflight = 3\0 0\n";
    assert_int_equal(cy_config_load_buf(&c, z, sizeof(z) - 1, "z.conf", &e), CY_ECONFIG);
    assert_string_equal(e.msg, "z.conf:2: a NUL byte in the line");
    assert_int_equal(c.max_queued, 8);
    assert_int_equal(c.max_inflight, 9);
    assert_int_equal(cy_config_load_buf(&c, "= 1", 3, NULL, &e), CY_ECONFIG);
    assert_string_equal(e.msg, "(config):1: unknown setting ''");
    /* Over the limit: refused before the text is read. */
    assert_int_equal(cy_config_load_buf(&c, "", CY_CONFIG_FILE_MAX + 1, "big", &e), CY_ECONFIG);
    assert_string_equal(e.msg, "big: larger than 1048576 bytes");
    /* A UTF-8 byte order mark before the first line is skipped. */
    static const char bom[] = "\xEF\xBB\xBFmax_queued = 11\n";
    assert_int_equal(cy_config_load_buf(&c, bom, sizeof(bom) - 1, "bom", &e), 0);
    assert_int_equal(c.max_queued, 11);
}

static void test_cy_config_print_roundtrip(void **state)
{
    (void)state;
    cy_config c, d;
    cy_config_defaults(&c);
    cy_config_error e;
    assert_int_equal(cy_config_set(&c, "max_topic_length", "99", &e), 0);
    char path[] = "/tmp/cyan-test-print-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    cy_config_print(&c, f);
    fclose(f);
    cy_config_defaults(&d);
    assert_int_equal(cy_config_load(&d, path, &e), 0);
    assert_memory_equal(&c, &d, sizeof(c));
    unlink(path);
}

static void test_cy_strerror_codes(void **state)
{
    (void)state;
    assert_string_equal(cy_strerror(0), "success");
    assert_string_equal(cy_strerror(CY_EAGAIN), "need more data");
    assert_string_equal(cy_strerror(CY_ESTORE), "storage error");
    assert_true(CY_ESTORE < -4096);
    assert_int_equal(CY_ENOMEM, -ENOMEM);
    assert_string_equal(cy_strerror(-99999), "unknown error");
}

static void test_cy_alloc_fail_after_counts(void **state)
{
    (void)state;
    cy_alloc_fail_after(2);
    void *a = cy_malloc(8), *b = cy_malloc(8), *c = cy_malloc(8), *d = cy_malloc(8);
    assert_non_null(a);
    assert_non_null(b);
    assert_null(c);
    assert_non_null(d); /* one failure, then back to normal */
    cy_free(a);
    cy_free(b);
    cy_free(d);
    char *s = cy_strndup("hello world", 5);
    assert_string_equal(s, "hello");
    cy_free(s);
}

static void test_cy_logrl_allow_one_line_per_source_per_window(void **state)
{
    (void)state;
    static cy_logrl rl;
    cy_logrl_init(&rl, 1000, 100);
    uint64_t held = 99;
    assert_int_equal(cy_logrl_allow(&rl, "10.0.0.1", 5000, &held), 1);
    assert_int_equal(held, 0);
    for (int i = 0; i < 7; i++) assert_int_equal(cy_logrl_allow(&rl, "10.0.0.1", 5100 + i, &held), 0);
    /* another source is not held back by the first */
    assert_int_equal(cy_logrl_allow(&rl, "10.0.0.2", 5200, &held), 1);
    assert_int_equal(held, 0);
    /* the next window's line reports what was held back */
    assert_int_equal(cy_logrl_allow(&rl, "10.0.0.1", 6000, &held), 1);
    assert_int_equal(held, 7);
    assert_int_equal(cy_logrl_allow(&rl, "10.0.0.1", 6001, &held), 0);
}

static void test_cy_logrl_allow_burst_caps_all_sources(void **state)
{
    (void)state;
    static cy_logrl rl;
    cy_logrl_init(&rl, 1000, 3);
    uint64_t held = 0;
    char key[32];
    int lines = 0;
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "192.0.2.%d", i);
        lines += cy_logrl_allow(&rl, key, 100, &held);
    }
    assert_int_equal(lines, 3);
    /* a new window lets lines through again, and counts what was held */
    uint64_t total = 0;
    lines = 0;
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "192.0.2.%d", i);
        if (cy_logrl_allow(&rl, key, 1200, &held)) {
            lines++;
            total += held;
        }
    }
    assert_int_equal(lines, 3);
    assert_true(total >= 1);
}

/* cy_list_next: every item of a comma list, blanks trimmed, empty ones too. */
static void test_cy_list_next_items(void **state)
{
    (void)state;
    static const struct {
        const char *list, *want; /* want: the items joined by '|' */
    } cases[] = {
        {"a", "a"},
        {" a ,\tb c ,d", "a|b c|d"},
        {"", ""},
        {"a,", "a|"},
        {",a,,b", "|a||b"},
        {" , ", "|"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char got[64] = "";
        size_t used = 0, len;
        const char *p = cases[i].list, *item;
        unsigned n = 0;
        while ((item = cy_list_next(&p, &len))) {
            assert_true(used + len + 2 < sizeof(got));
            if (n++) got[used++] = '|';
            memcpy(got + used, item, len);
            used += len;
            got[used] = '\0';
        }
        assert_string_equal(got, cases[i].want);
        assert_null(cy_list_next(&p, &len)); /* stays at the end */
    }
    const char *none = NULL;
    size_t len = 7;
    assert_null(cy_list_next(&none, &len));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cy_buf_append_consume),
        cmocka_unit_test(test_cy_buf_put_big_endian),
        cmocka_unit_test(test_cy_buf_reserve_compacts),
        cmocka_unit_test(test_cy_buf_reserve_from_first_block),
        cmocka_unit_test(test_cy_buf_append_enomem_leaves_buffer),
        cmocka_unit_test(test_cy_buf_shrink_idle),
        cmocka_unit_test(test_cy_map_put_get_del),
        cmocka_unit_test(test_cy_map_put_enomem),
        cmocka_unit_test(test_cy_map_entries_reused),
        cmocka_unit_test(test_cy_intern_shares_and_frees),
        cmocka_unit_test(test_cy_map_each_visits_all),
        cmocka_unit_test(test_cy_config_defaults),
        cmocka_unit_test(test_cy_config_set_errors),
        cmocka_unit_test(test_cy_config_load_file),
        cmocka_unit_test(test_cy_config_long_line),
        cmocka_unit_test(test_cy_config_load_buf),
        cmocka_unit_test(test_cy_config_print_roundtrip),
        cmocka_unit_test(test_cy_strerror_codes),
        cmocka_unit_test(test_cy_alloc_fail_after_counts),
        cmocka_unit_test(test_cy_logrl_allow_one_line_per_source_per_window),
        cmocka_unit_test(test_cy_logrl_allow_burst_caps_all_sources),
        cmocka_unit_test(test_cy_list_next_items),
    };
    return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
