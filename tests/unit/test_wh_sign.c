/* Unit tests for webhooks/sign: Standard Webhooks secrets and signatures.
 *
 * The known answers are not computed by the code under test: the first is
 * the Standard Webhooks reference vector (the one its libraries test
 * against); the others were computed while writing this test with Python's
 * hmac module (hmac.new(key, msg, hashlib.sha256), base64.b64encode), and
 * the reference vector was checked the same way and with `openssl dgst
 * -sha256 -mac HMAC`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "webhooks/sign.h"

#include <stdio.h>
#include <string.h>

/* The signature value as a NUL-terminated string (in a static buffer), or
 * NULL with *rc set on an error. */
static const char *sign(const char *const *secrets, size_t n, const char *id, int64_t ts,
                        const void *body, size_t len, int *rc)
{
    static char text[512];
    cy_buf b;
    cy_buf_init(&b);
    *rc = cy_wh_sign(secrets, n, id, ts, body, len, &b);
    const char *r = NULL;
    if (*rc == 0 && cy_buf_size(&b) < sizeof(text)) {
        memcpy(text, cy_buf_head(&b), cy_buf_size(&b));
        text[cy_buf_size(&b)] = '\0';
        r = text;
    }
    cy_buf_fini(&b);
    return r;
}

static void test_reference_vector(void **state)
{
    (void)state;
    const char *secrets[] = {"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"};
    const char *body = "{\"test\": 2432232314}";
    int rc;
    const char *sig =
        sign(secrets, 1, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, strlen(body), &rc);
    assert_int_equal(rc, 0);
    assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

static void test_more_known_answers(void **state)
{
    (void)state;
    int rc;
    /* 16-byte key (padded base64), empty body, a cyan event id. */
    const char *s16[] = {"whsec_AAECAwQFBgcICQoLDA0ODw=="};
    assert_string_equal(sign(s16, 1, "2-1764855332123456", 1764855332, NULL, 0, &rc),
                        "v1,FiExNOiV+yGcC/jjiO5woNye/7HyOSF5FyfXh5w/wag=");
    /* 64-byte key, a negative timestamp, a body with NUL and a non-UTF-8 byte. */
    const char *s64[] = {"whsec_AwoRGB8mLTQ7QklQV15lbHN6gYiPlp2kq7K5wMfO1dzj6vH4/"
                         "wYNFBsiKTA3PkVMU1phaG92fYSLkpmgp661vA=="};
    assert_string_equal(sign(s64, 1, "0-1", -1, "a\0b\xff", 4, &rc),
                        "v1,IbPurMpGscNQl6pL5PIWEQ1Rfyx3X18JNluyS+UmLz8=");
    /* 17-byte key (one '=' of padding). */
    const char *s17[] = {"whsec_AAECAwQFBgcICQoLDA0ODxA="};
    assert_string_equal(sign(s17, 1, "x", 0, "{}", 2, &rc),
                        "v1,y1CXMkwdXu6jkAPAN4+K0+nDya5/xhYdudx0G6ogdio=");
}

static void test_two_secrets(void **state)
{
    (void)state;
    int rc;
    const char *two[] = {"whsec_AAECAwQFBgcICQoLDA0ODxA=", "whsec_AAECAwQFBgcICQoLDA0ODw=="};
    /* The second computed with Python as above; a space between, nothing else. */
    assert_string_equal(sign(two, 2, "x", 0, "{}", 2, &rc),
                        "v1,y1CXMkwdXu6jkAPAN4+K0+nDya5/xhYdudx0G6ogdio= "
                        "v1,y2gu2TLGqNZ1EmMq+rTgPsDVfeNkDQvIWT51/s/WyU8=");

    /* NULL and "" entries are skipped: one signature, no stray space. */
    const char *holes[] = {NULL, "whsec_AAECAwQFBgcICQoLDA0ODxA="};
    assert_string_equal(sign(holes, 2, "x", 0, "{}", 2, &rc),
                        "v1,y1CXMkwdXu6jkAPAN4+K0+nDya5/xhYdudx0G6ogdio=");
    const char *holes2[] = {"whsec_AAECAwQFBgcICQoLDA0ODxA=", ""};
    assert_string_equal(sign(holes2, 2, "x", 0, "{}", 2, &rc),
                        "v1,y1CXMkwdXu6jkAPAN4+K0+nDya5/xhYdudx0G6ogdio=");
    const char *none[] = {NULL, ""};
    assert_null(sign(none, 2, "x", 0, "{}", 2, &rc));
    assert_int_equal(rc, CY_EINVAL);
}

static void test_sign_errors_leave_buffer(void **state)
{
    (void)state;
    const char *good = "whsec_AAECAwQFBgcICQoLDA0ODxA=";
    const char *mixed[] = {good, "whsec_not base64"};
    const char *ok[] = {good};
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_buf_append(&b, "keep:", 5), 0);
    assert_int_equal(cy_wh_sign(mixed, 2, "x", 0, (const uint8_t *)"{}", 2, &b), CY_EINVAL);
    assert_int_equal(cy_buf_size(&b), 5);
    assert_int_equal(cy_wh_sign(ok, 0, "x", 0, NULL, 0, &b), CY_EINVAL);
    assert_int_equal(cy_wh_sign(ok, 3, "x", 0, NULL, 0, &b), CY_EINVAL);
    assert_int_equal(cy_wh_sign(NULL, 1, "x", 0, NULL, 0, &b), CY_EINVAL);
    assert_int_equal(cy_wh_sign(ok, 1, NULL, 0, NULL, 0, &b), CY_EINVAL);
    assert_int_equal(cy_wh_sign(ok, 1, "x", 0, NULL, 3, &b), CY_EINVAL);
    assert_int_equal(cy_wh_sign(ok, 1, "x", 0, NULL, 0, NULL), CY_EINVAL);
    assert_int_equal(cy_buf_size(&b), 5);
    /* Appends after what is there. */
    assert_int_equal(cy_wh_sign(ok, 1, "x", 0, (const uint8_t *)"{}", 2, &b), 0);
    assert_int_equal(cy_buf_size(&b), 5 + 47);
    assert_memory_equal(cy_buf_head(&b),
                        "keep:v1,y1CXMkwdXu6jkAPAN4+K0+nDya5/xhYdudx0G6ogdio=", 52);
    /* Allocation failure: CY_ENOMEM, and the buffer as it was. */
    cy_buf_fini(&b);
    cy_alloc_fail_after(0);
    assert_int_equal(cy_wh_sign(ok, 1, "x", 0, NULL, 0, &b), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    assert_int_equal(cy_buf_size(&b), 0);
    cy_buf_fini(&b);
}

static void test_secret_new(void **state)
{
    (void)state;
    char a[CY_WH_SECRET_LEN], b[CY_WH_SECRET_LEN];
    memset(a, 'x', sizeof(a));
    assert_int_equal(cy_wh_secret_new(a), 0);
    assert_int_equal(cy_wh_secret_new(b), 0);
    assert_int_equal(strlen(a), 6 + 32);
    assert_memory_equal(a, "whsec_", 6);
    assert_string_not_equal(a, b);
    uint8_t key[64], key2[64];
    size_t len = 0, len2 = 0;
    assert_int_equal(cy_wh_secret_key(a, key, &len), 0);
    assert_int_equal(len, CY_WH_SECRET_BYTES);
    assert_int_equal(cy_wh_secret_key(b, key2, &len2), 0);
    assert_memory_not_equal(key, key2, CY_WH_SECRET_BYTES);
    /* A new secret signs. */
    const char *secrets[] = {a};
    int rc;
    const char *sig = sign(secrets, 1, "1-2", 3, "x", 1, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(strlen(sig), 3 + 44);
    assert_int_equal(cy_wh_secret_new(NULL), CY_EINVAL);
}

static void test_secret_key(void **state)
{
    (void)state;
    uint8_t key[64];
    size_t len = 0;
    assert_int_equal(cy_wh_secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", key, &len), 0);
    assert_int_equal(len, 24);
    assert_int_equal(key[0], 0x31);
    assert_int_equal(key[23], 0xb0);
    /* 16 bytes (the least) and 64 (the most) */
    assert_int_equal(cy_wh_secret_key("whsec_AAECAwQFBgcICQoLDA0ODw==", key, &len), 0);
    assert_int_equal(len, 16);
    for (int i = 0; i < 16; i++)
        assert_int_equal(key[i], i);
    char s64[6 + 88 + 1] = "whsec_";
    memset(s64 + 6, 'A', 86);
    strcpy(s64 + 92, "==");
    assert_int_equal(cy_wh_secret_key(s64, key, &len), 0);
    assert_int_equal(len, 64);
}

static void test_bad_secrets(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",
        "whsec_",
        "whsec",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",        /* no prefix */
        "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  /* prefix in capitals */
        " whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", /* leading space */
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",  /* not a multiple of 4 */
        "whsec_MfKQ9r8GKYqrTwjU D8ILPZIo2LaLaSw", /* space inside */
        "whsec_MfKQ9r8GKYqrTwjU-D8ILPZIo2LaLa_w", /* URL-safe alphabet */
        "whsec_MfKQ9r8GKYqrTwjU=D8ILPZIo2LaLaSw", /* '=' inside */
        "whsec_AAECAwQFBgcICQoLDA0ODw=A",         /* '=' before the last */
        "whsec_AAECAwQFBgcICQoLDA0O===",          /* three '=' */
        "whsec_AAECAwQFBgcICQoLDA0ODw====",
        "whsec_AAAAAAAAAAAAAAAAAAAA", /* 15 bytes: too short */
        ("whsec_\xc3\xa9\xc3\xa9" /* not base64 (split: \xa9A would be one escape) */
         "AAAAAAAAAAAAAAAAAAAAAAAA"),
    };
    uint8_t key[64];
    size_t len = 99;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (cy_wh_secret_key(bad[i], key, &len) != CY_EINVAL) fail_msg("accepted %s", bad[i]);
        const char *secrets[] = {bad[i]};
        int rc;
        assert_null(sign(secrets, 1, "x", 0, NULL, 0, &rc));
        assert_int_equal(rc, CY_EINVAL);
    }
    /* 65 bytes: 88 characters with one '='; 66 bytes: 88 without. */
    char s65[6 + 88 + 1] = "whsec_";
    memset(s65 + 6, 'A', 88);
    s65[6 + 88] = '\0';
    assert_int_equal(cy_wh_secret_key(s65, key, &len), CY_EINVAL);
    s65[6 + 87] = '=';
    assert_int_equal(cy_wh_secret_key(s65, key, &len), CY_EINVAL);
    assert_int_equal(len, 99); /* untouched */
    assert_int_equal(cy_wh_secret_key(NULL, key, &len), CY_EINVAL);
    assert_int_equal(cy_wh_secret_key("whsec_AAECAwQFBgcICQoLDA0ODw==", NULL, &len), CY_EINVAL);
    assert_int_equal(cy_wh_secret_key("whsec_AAECAwQFBgcICQoLDA0ODw==", key, NULL), CY_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_vector), cmocka_unit_test(test_more_known_answers),
        cmocka_unit_test(test_two_secrets),      cmocka_unit_test(test_sign_errors_leave_buffer),
        cmocka_unit_test(test_secret_new),       cmocka_unit_test(test_secret_key),
        cmocka_unit_test(test_bad_secrets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
