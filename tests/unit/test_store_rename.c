/* Tests of cy_registry_device_rename (src/store/registry.c), the registry
 * side of `cyan device rename` and PATCH /v1/devices/{id}: by id or by old
 * name, the id and secret unchanged, the old name free afterwards, the new
 * one unique and checked by the rules of device names, a rename to its own
 * name a success, internal devices out of reach, seen by another handle.
 */
#include "store_testlib.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/cy_err.h"
#include "store/store.h"

#include <string.h>

typedef cyt_registry_fixture fixture;

static int setup(void **state)
{
    return cyt_registry_setup(state, "/tmp/cyan-rename-XXXXXX");
}

#define teardown cyt_registry_teardown

typedef struct added {
    char id[CY_DEVICE_ID_LEN + 1];
    char secret[CY_DEVICE_SECRET_LEN + 1];
} added;

static added add(cy_registry *r, const char *name)
{
    added a;
    assert_int_equal(cy_registry_device_add(r, name, a.id, a.secret, NULL), 0);
    return a;
}

static void test_cy_registry_device_rename_by_id_and_name(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "lamp");
    cy_device d;
    memset(&d, 0, sizeof(d));
    assert_int_equal(cy_registry_device_rename(f->r, "lamp", "lamp-2", &d), 0);
    assert_string_equal(d.id, a.id);
    assert_string_equal(d.name, "lamp-2");
    assert_int_equal(cy_registry_device_get(f->r, "lamp", &d), CY_ENOENT);
    assert_int_equal(cy_registry_device_get(f->r, "lamp-2", &d), 0);
    assert_string_equal(d.id, a.id);
    /* by id, and out NULL */
    assert_int_equal(cy_registry_device_rename(f->r, a.id, "lamp.3", NULL), 0);
    assert_int_equal(cy_registry_device_get(f->r, a.id, &d), 0);
    assert_string_equal(d.name, "lamp.3");
    /* The secret still logs in. */
    assert_int_equal(cy_registry_device_check(f->r, a.id, strlen(a.id), (const uint8_t *)a.secret,
                                              strlen(a.secret)),
                     0);
    /* The old name is free again. */
    added b = add(f->r, "lamp");
    assert_string_not_equal(b.id, a.id);
}

static void test_cy_registry_device_rename_refusals(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "a");
    add(f->r, "b");
    cy_device d;
    memset(&d, 0x55, sizeof(d));
    assert_int_equal(cy_registry_device_rename(f->r, "a", "b", &d), CY_EEXIST);
    assert_int_equal(cy_registry_device_rename(f->r, "nope", "c", &d), CY_ENOENT);
    static const char *const bad[] = {
        "",
        "with space",
        "slash/no",
        "a+b",
        "#",
        "0123456789abcdef01234567", /* shaped like an id */
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cy_registry_device_rename(f->r, "a", bad[i], &d), CY_EINVAL);
    assert_int_equal(cy_registry_device_rename(NULL, "a", "c", &d), CY_EINVAL);
    assert_int_equal(cy_registry_device_rename(f->r, NULL, "c", &d), CY_EINVAL);
    assert_int_equal(cy_registry_device_rename(f->r, "a", NULL, &d), CY_EINVAL);
    /* Nothing changed; its own name is a success. */
    assert_int_equal(cy_registry_device_get(f->r, a.id, &d), 0);
    assert_string_equal(d.name, "a");
    assert_int_equal(cy_registry_device_rename(f->r, "a", "a", &d), 0);
    assert_string_equal(d.name, "a");
}

static void test_cy_registry_device_rename_not_internal(void **state)
{
    fixture *f = *state;
    char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1];
    assert_int_equal(cy_registry_internal_device(f->r, "cyan:test", NULL, NULL, id, secret, NULL),
                     0);
    assert_int_equal(cy_registry_device_rename(f->r, id, "mine", NULL), CY_ENOENT);
    assert_int_equal(cy_registry_device_rename(f->r, "cyan:test", "mine", NULL), CY_ENOENT);
    cy_device d;
    assert_int_equal(cy_registry_internal_get(f->r, id, &d), 0);
    assert_string_equal(d.name, "cyan:test");
}

static void test_cy_registry_device_rename_seen_by_another_handle(void **state)
{
    fixture *f = *state;
    added a = add(f->r, "first");
    cy_registry *other = NULL;
    assert_int_equal(cy_registry_open(f->path, &other), 0);
    cy_device d;
    assert_int_equal(cy_registry_device_get(other, "first", &d), 0);
    assert_int_equal(cy_registry_device_rename(f->r, "first", "second", NULL), 0);
    assert_int_equal(cy_registry_device_get(other, "first", &d), CY_ENOENT);
    assert_int_equal(cy_registry_device_get(other, "second", &d), 0);
    assert_string_equal(d.id, a.id);
    cy_registry_close(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cy_registry_device_rename_by_id_and_name, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_rename_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_rename_not_internal, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_registry_device_rename_seen_by_another_handle,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
