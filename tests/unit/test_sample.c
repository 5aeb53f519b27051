/* Unit tests for monitor/sample: snapshots and label sets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/cy_err.h"
#include "alerts/sample.h"

#include <stdio.h>
#include <string.h>

static void test_add_find(void **state)
{
    (void)state;
    cy_snapshot s;
    cy_snapshot_init(&s, 1000);
    for (int i = 0; i < 600; i++) { /* past the first growth */
        char l[32];
        snprintf(l, sizeof(l), "shard=\"%d\"", i);
        assert_int_equal(cy_snapshot_add(&s, "cyan_shard_up", l, CY_SAMPLE_GAUGE, i, 5, i % 2),
                         0);
    }
    assert_int_equal(cy_snapshot_add(&s, "cyan_build_info", NULL, CY_SAMPLE_GAUGE, 1, 0, false),
                     0);
    const cy_sample *x = cy_snapshot_find(&s, "cyan_shard_up", "shard=\"599\"");
    assert_non_null(x);
    assert_true(x->value == 599);
    assert_true(x->stale);
    assert_int_equal(x->changed_ms, 5);
    assert_non_null(cy_snapshot_find(&s, "cyan_build_info", ""));
    assert_null(cy_snapshot_find(&s, "cyan_shard_up", "shard=\"600\""));
    assert_null(cy_snapshot_find(&s, "cyan_shard_up", ""));
    cy_snapshot_reset(&s, 2000);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.now_ms, 2000);
    assert_null(cy_snapshot_find(&s, "cyan_build_info", ""));
    cy_snapshot_fini(&s);
}

static void test_too_long(void **state)
{
    (void)state;
    cy_snapshot s;
    cy_snapshot_init(&s, 0);
    char big[CY_SAMPLE_LABELS_MAX + 1];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(cy_snapshot_add(&s, "x", big, CY_SAMPLE_GAUGE, 1, 0, false), CY_EINVAL);
    assert_int_equal(cy_snapshot_add(&s, big, "", CY_SAMPLE_GAUGE, 1, 0, false), CY_EINVAL);
    assert_int_equal(cy_snapshot_add(&s, "", "", CY_SAMPLE_GAUGE, 1, 0, false), CY_EINVAL);
    assert_int_equal(s.n, 0);
    cy_snapshot_fini(&s);
}

static void test_labels(void **state)
{
    (void)state;
    const char *l = "reason=\"hung\",shard=\"2\",text=\"a \\\"b\\\" \\\\c\"";
    char v[32];
    assert_true(cy_labels_get(l, "shard", v, sizeof(v)));
    assert_string_equal(v, "2");
    assert_true(cy_labels_get(l, "reason", v, sizeof(v)));
    assert_string_equal(v, "hung");
    assert_true(cy_labels_get(l, "text", v, sizeof(v)));
    assert_string_equal(v, "a \"b\" \\c");
    assert_false(cy_labels_get(l, "shar", v, sizeof(v)));
    assert_false(cy_labels_get("", "shard", v, sizeof(v)));
    assert_true(cy_labels_match(l, ""));
    assert_true(cy_labels_match(l, "shard=\"2\""));
    assert_true(cy_labels_match(l, "shard=\"2\",reason=\"hung\""));
    assert_false(cy_labels_match(l, "shard=\"3\""));
    assert_false(cy_labels_match(l, "shard=\"2\",step=\"call\""));
    assert_false(cy_labels_match("", "shard=\"2\""));
    /* A malformed set matches nothing it cannot read. */
    assert_false(cy_labels_get("shard=2", "shard", v, sizeof(v)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_find),
        cmocka_unit_test(test_too_long),
        cmocka_unit_test(test_labels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
