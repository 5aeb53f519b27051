/* fuzz_acl: libFuzzer target for the ACL parser and matcher (src/device/acl.c).
 *
 * The input is an ACL file, optionally followed by a NUL byte and a probe:
 * "client id NUL username NUL topic-or-filter" (a missing username is an
 * anonymous client). Whatever the bytes, the parser must not crash, must
 * answer a NULL with an error naming the file, and a success with no
 * error. A parsed ACL is then asked about the probe, and about a few fixed
 * topics and filters, and what it answers must hold together:
 *   - a topic name read and subscribed to as a filter get the same answer
 *     (for a filter without wildcards, covering is matching);
 *   - with no deny rule, a filter the client may subscribe to yields only
 *     topics it may read: one topic the filter matches is built (+ -> a
 *     level, # -> two levels) and read-checked. This is what lets cyan
 *     skip the per-message check (session.c);
 *   - a second parse of the same text gives the same rule and user counts;
 *   - no ACL (NULL) allows everything.
 * Any broken rule is abort(), which libFuzzer reports as a crash.
 */
#include "device/acl.h"
#include "router/topic.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

typedef struct probe {
    const char *cid, *user;
    size_t cidl, userl;
} probe;

static bool can(const cy_acl *a, const probe *p, const char *t, size_t len, int access)
{
    return cy_acl_check(a, p->cid, p->cidl, p->user, p->userl, t, len, access);
}

/* A topic the valid filter f matches: '+' becomes "x", '#' becomes "x/y"
 * ("#" alone, the same). Returns its length, or 0 if it does not fit. */
static size_t instance(const char *f, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        const char *put = NULL;
        size_t k = 1;
        if (f[i] == '+') {
            put = "x";
        } else if (f[i] == '#') {
            put = "x/y";
            k = 3;
        } else {
            put = &f[i];
        }
        if (n + k >= cap) return 0;
        memcpy(out + n, put, k);
        n += k;
    }
    return n;
}

static void probe_one(const cy_acl *a, const probe *p, const char *t, size_t len)
{
    if (len == 0 || len > 65535) return;
    bool name = cy_topic_valid_name(t, len);
    bool filter = cy_topic_valid_filter(t, len);
    if (name) {
        bool r = can(a, p, t, len, CY_ACL_READ);
        (void)can(a, p, t, len, CY_ACL_WRITE);
        CHECK(can(NULL, p, t, len, CY_ACL_WRITE));
        if (filter) CHECK(can(a, p, t, len, CY_ACL_SUBSCRIBE) == r);
    }
    if (filter && can(a, p, t, len, CY_ACL_SUBSCRIBE) && !cy_acl_has_deny(a)) {
        char topic[512];
        size_t tl = instance(t, len, topic, sizeof(topic));
        if (tl && cy_topic_valid_name(topic, tl)) CHECK(can(a, p, topic, tl, CY_ACL_READ));
    }
}

static const char *const fixed[] = {
    "#",      "+",      "a",           "a/b",         "a/+",         "a/#",      "+/b",
    "$SYS/x", "$SYS/#", "devices/c/x", "devices/+/#", "devices/c/#", "events/x", "x/y/z",
    "/",      "//",     "a//b",        "u/u",         "c/c/#",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    const uint8_t *nul = memchr(data, 0, size);
    size_t tlen = nul ? (size_t)(nul - data) : size;
    char err[300];
    memset(err, 'Z', sizeof(err));
    cy_acl *a = cy_acl_parse("fuzz", text, tlen, err, sizeof(err));
    CHECK(memchr(err, 0, sizeof(err)) != NULL);
    if (!a) {
        CHECK(strncmp(err, "fuzz", 4) == 0 && strlen(err) > 6);
        return 0;
    }
    CHECK(err[0] == '\0');
    cy_acl *b = cy_acl_parse("fuzz", text, tlen, NULL, 0);
    CHECK(b && cy_acl_rule_count(b) == cy_acl_rule_count(a) &&
          cy_acl_user_count(b) == cy_acl_user_count(a));
    cy_acl_free(b);

    /* The probe: client id, username, topic (NUL-separated). */
    probe who[3] = {{"c", NULL, 1, 0}, {"c", "u", 1, 1}, {"+", "#", 1, 1}};
    const char *t = NULL;
    size_t tl = 0;
    if (nul) {
        const char *p = (const char *)nul + 1, *end = (const char *)data + size;
        const char *n1 = memchr(p, 0, (size_t)(end - p));
        if (n1) {
            who[0].cid = who[1].cid = p;
            who[0].cidl = who[1].cidl = (size_t)(n1 - p);
            p = n1 + 1;
            const char *n2 = memchr(p, 0, (size_t)(end - p));
            if (n2) {
                who[1].user = p;
                who[1].userl = (size_t)(n2 - p);
                p = n2 + 1;
            }
        }
        t = p;
        tl = (size_t)(end - p);
    }
    for (size_t w = 0; w < 3; w++) {
        if (t) probe_one(a, &who[w], t, tl);
        for (size_t i = 0; i < sizeof(fixed) / sizeof(*fixed); i++)
            probe_one(a, &who[w], fixed[i], strlen(fixed[i]));
    }
    cy_acl_free(a);
    return 0;
}
