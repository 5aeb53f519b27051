/* test_session_map: the sessions by client id (src/device/session_map.c),
 * an intrusive hash table whose entries are the sessions themselves.
 *
 * The sessions here are bare: a cy_session allocated as the device layer
 * allocates one (its client id inline) with nothing else set, which is all
 * the map reads. Growth is checked by its visible effect (every session
 * still found after many doublings, the slots a power of two and at least
 * the count), allocation failure with cy_alloc's fault hook.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "device/device_int.h"
#include "device/session.h"

static cy_session *mk(const char *id, size_t len)
{
    /* as cy_session_new does, but never under sizeof: the compiler checks a
     * plain calloc's size against the struct */
    size_t n = offsetof(cy_session, client_id) + len + 1;
    cy_session *s = calloc(1, n > sizeof(cy_session) ? n : sizeof(cy_session));
    assert_non_null(s);
    memcpy(s->client_id, id, len);
    s->client_id_len = (uint16_t)len;
    return s;
}

static cy_session *mks(const char *id)
{
    return mk(id, strlen(id));
}

static void name(char *buf, size_t n, unsigned i)
{
    snprintf(buf, n, "dev-%u", i);
}

static void count_visit(void *ctx, cy_session *s)
{
    (void)s;
    (*(size_t *)ctx)++;
}

static void test_session_map_empty(void **state)
{
    (void)state;
    cy_session_map m;
    cy_session_map_init(&m);
    assert_null(cy_session_map_get(&m, "a", 1));
    assert_null(cy_session_map_get(&m, "", 0));
    cy_session *s = mks("a");
    assert_false(cy_session_map_del(&m, s));
    size_t n = 0;
    cy_session_map_each(&m, count_visit, &n);
    assert_int_equal(n, 0);
    cy_session_map_fini(&m);
    cy_session_map_fini(&m); /* twice: still safe */
    free(s);
}

static void test_session_map_put_get_del(void **state)
{
    (void)state;
    cy_session_map m;
    cy_session_map_init(&m);
    cy_session *a = mks("abc"), *ab = mks("ab"), *abcd = mks("abcd"), *e = mk("", 0);
    /* the same bytes, with a NUL inside: a different, longer key */
    cy_session *z = mk("ab\0c", 4);
    assert_int_equal(cy_session_map_put(&m, a), 0);
    assert_int_equal(cy_session_map_put(&m, ab), 0);
    assert_int_equal(cy_session_map_put(&m, abcd), 0);
    assert_int_equal(cy_session_map_put(&m, e), 0);
    assert_int_equal(cy_session_map_put(&m, z), 0);
    assert_int_equal(m.count, 5);
    assert_ptr_equal(cy_session_map_get(&m, "abc", 3), a);
    assert_ptr_equal(cy_session_map_get(&m, "abcdef", 3), a); /* only len bytes count */
    assert_ptr_equal(cy_session_map_get(&m, "ab", 2), ab);
    assert_ptr_equal(cy_session_map_get(&m, "abcd", 4), abcd);
    assert_ptr_equal(cy_session_map_get(&m, "", 0), e);
    assert_ptr_equal(cy_session_map_get(&m, "ab\0c", 4), z);
    assert_null(cy_session_map_get(&m, "abd", 3));
    assert_null(cy_session_map_get(&m, "a", 1));

    /* a second session of a present id: refused, nothing changed */
    cy_session *a2 = mks("abc");
    assert_int_equal(cy_session_map_put(&m, a2), CY_EEXIST);
    assert_int_equal(cy_session_map_put(&m, a), CY_EEXIST);
    assert_int_equal(m.count, 5);
    assert_ptr_equal(cy_session_map_get(&m, "abc", 3), a);
    assert_false(cy_session_map_del(&m, a2)); /* not in: the one of its id is a */
    assert_ptr_equal(cy_session_map_get(&m, "abc", 3), a);

    assert_true(cy_session_map_del(&m, a));
    assert_false(cy_session_map_del(&m, a));
    assert_int_equal(m.count, 4);
    assert_null(cy_session_map_get(&m, "abc", 3));
    assert_ptr_equal(cy_session_map_get(&m, "abcd", 4), abcd);
    /* and now the other one of that id may go in */
    assert_int_equal(cy_session_map_put(&m, a2), 0);
    assert_ptr_equal(cy_session_map_get(&m, "abc", 3), a2);
    cy_session_map_fini(&m);
    free(a);
    free(a2);
    free(ab);
    free(abcd);
    free(e);
    free(z);
}

/* Many sessions: the slots double many times (16 -> 16384) and chains
 * form; every one is found, deletes in the middle of chains keep the rest. */
#define MANY 10000

static void test_session_map_grow_and_delete(void **state)
{
    (void)state;
    cy_session_map m;
    cy_session_map_init(&m);
    static cy_session *v[MANY];
    char id[32];
    for (unsigned i = 0; i < MANY; i++) {
        name(id, sizeof(id), i);
        v[i] = mks(id);
        assert_int_equal(cy_session_map_put(&m, v[i]), 0);
        assert_true(m.nslots >= m.count);
    }
    assert_int_equal(m.count, MANY);
    assert_int_equal(m.nslots & (m.nslots - 1), 0); /* a power of two */
    assert_true(m.nslots < 2 * MANY);               /* and no more than one doubling past */
    for (unsigned i = 0; i < MANY; i++) {
        name(id, sizeof(id), i);
        assert_ptr_equal(cy_session_map_get(&m, id, strlen(id)), v[i]);
    }
    /* the longest chain stays short (FNV-1a over these ids) */
    size_t longest = 0;
    for (size_t i = 0; i < m.nslots; i++) {
        size_t n = 0;
        for (cy_session *s = m.slots[i]; s; s = s->hnext)
            n++;
        if (n > longest) longest = n;
    }
    assert_true(longest <= 12);

    for (unsigned i = 0; i < MANY; i += 2)
        assert_true(cy_session_map_del(&m, v[i]));
    assert_int_equal(m.count, MANY / 2);
    for (unsigned i = 0; i < MANY; i++) {
        name(id, sizeof(id), i);
        cy_session *s = cy_session_map_get(&m, id, strlen(id));
        if (i % 2)
            assert_ptr_equal(s, v[i]);
        else
            assert_null(s);
    }
    size_t n = 0;
    cy_session_map_each(&m, count_visit, &n);
    assert_int_equal(n, MANY / 2);
    cy_session_map_fini(&m);
    for (unsigned i = 0; i < MANY; i++)
        free(v[i]);
}

/* The visitor may take the session it is given out and free it: how the
 * device layer frees all its sessions. */
static void del_and_free(void *ctx, cy_session *s)
{
    assert_true(cy_session_map_del(ctx, s));
    free(s);
}

static void test_session_map_each_frees(void **state)
{
    (void)state;
    cy_session_map m;
    cy_session_map_init(&m);
    char id[32];
    for (unsigned i = 0; i < 1000; i++) {
        name(id, sizeof(id), i);
        assert_int_equal(cy_session_map_put(&m, mks(id)), 0);
    }
    cy_session_map_each(&m, del_and_free, &m); /* ASan: no use after free, no leak */
    assert_int_equal(m.count, 0);
    for (size_t i = 0; i < m.nslots; i++)
        assert_null(m.slots[i]);
    cy_session_map_fini(&m);
}

/* Out of memory: the first put (no slots yet) fails and changes nothing; a
 * failed growth later only lengthens the chains. */
static void test_session_map_alloc_failure(void **state)
{
    (void)state;
    cy_session_map m;
    cy_session_map_init(&m);
    cy_session *first = mks("first");
    cy_alloc_fail_after(0);
    assert_int_equal(cy_session_map_put(&m, first), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    assert_int_equal(m.count, 0);
    assert_null(cy_session_map_get(&m, "first", 5));
    assert_int_equal(cy_session_map_put(&m, first), 0);

    static cy_session *v[100];
    char id[32];
    size_t slots = m.nslots;
    for (unsigned i = 0; i < 100; i++) {
        name(id, sizeof(id), i);
        v[i] = mks(id);
        cy_alloc_fail_after(0); /* every growth fails */
        assert_int_equal(cy_session_map_put(&m, v[i]), 0);
        cy_alloc_fail_after(-1);
    }
    assert_int_equal(m.nslots, slots); /* never grew */
    assert_int_equal(m.count, 101);
    for (unsigned i = 0; i < 100; i++) {
        name(id, sizeof(id), i);
        assert_ptr_equal(cy_session_map_get(&m, id, strlen(id)), v[i]);
    }
    /* the next put grows it */
    cy_session *last = mks("last");
    assert_int_equal(cy_session_map_put(&m, last), 0);
    assert_true(m.nslots > slots);
    for (unsigned i = 0; i < 100; i++) {
        name(id, sizeof(id), i);
        assert_ptr_equal(cy_session_map_get(&m, id, strlen(id)), v[i]);
    }
    assert_ptr_equal(cy_session_map_get(&m, "first", 5), first);
    cy_session_map_fini(&m);
    for (unsigned i = 0; i < 100; i++)
        free(v[i]);
    free(first);
    free(last);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_map_empty),
        cmocka_unit_test(test_session_map_put_get_del),
        cmocka_unit_test(test_session_map_grow_and_delete),
        cmocka_unit_test(test_session_map_each_frees),
        cmocka_unit_test(test_session_map_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
