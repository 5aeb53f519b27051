/* scopes: the names of API token scopes, lists of them, and token
 * lifetimes ("30d"), shared by the registry, the CLI and the API (store.h,
 * "API tokens").
 *
 * A scope is one bit of a token's mask. The names are what people type and
 * what the API shows: "devices:read", "devices:call", "events:read",
 * "events:publish", "webhooks:manage", "admin", and "internal" for cyan's
 * own token, which is shown but never parsed (no user token may hold it).
 * Pure functions: no state, any thread.
 */
#include "store/store.h"

#include "core/cy_err.h"
#include "core/cy_str.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    unsigned bit;
    const char *name;
} names[] = {
    {CY_SCOPE_DEVICES_READ, "devices:read"},
    {CY_SCOPE_DEVICES_CALL, "devices:call"},
    {CY_SCOPE_EVENTS_READ, "events:read"},
    {CY_SCOPE_EVENTS_PUBLISH, "events:publish"},
    {CY_SCOPE_WEBHOOKS_MANAGE, "webhooks:manage"},
    {CY_SCOPE_ADMIN, "admin"},
    {CY_SCOPE_INTERNAL, "internal"},
};

#define NNAMES (sizeof(names) / sizeof(names[0]))

_Static_assert(sizeof("webhooks:manage") == CY_SCOPE_NAME_MAX, "the longest scope name");

const char *cy_scope_name(unsigned bit)
{
    for (size_t i = 0; i < NNAMES; i++)
        if (names[i].bit == bit) return names[i].name;
    return NULL;
}

int cy_scope_parse(const char *name, size_t len, unsigned *bit)
{
    if (!name || !bit) return CY_EINVAL;
    for (size_t i = 0; i < NNAMES; i++)
        if (names[i].bit != CY_SCOPE_INTERNAL && strlen(names[i].name) == len &&
            memcmp(names[i].name, name, len) == 0) {
            *bit = names[i].bit;
            return 0;
        }
    return CY_EINVAL;
}

int cy_scopes_parse(const char *text, unsigned *scopes, char *bad, size_t bad_cap)
{
    if (bad && bad_cap) bad[0] = '\0';
    if (!text || !scopes) return CY_EINVAL;
    unsigned got = 0;
    const char *p = text, *start;
    size_t len;
    while ((start = cy_list_next(&p, &len))) {
        unsigned bit;
        if (cy_scope_parse(start, len, &bit)) {
            if (bad && bad_cap) {
                size_t n = len;
                if (n > bad_cap - 1) n = bad_cap - 1;
                memcpy(bad, start, n);
                bad[n] = '\0';
            }
            return CY_EINVAL;
        }
        got |= bit;
    }
    *scopes = got;
    return 0;
}

size_t cy_scopes_format(unsigned scopes, char *buf, size_t cap)
{
    size_t n = 0;
    if (cap) buf[0] = '\0';
    for (size_t i = 0; i < NNAMES; i++) {
        if (!(scopes & names[i].bit)) continue;
        int k = snprintf(cap > n ? buf + n : NULL, cap > n ? cap - n : 0, "%s%s", n ? "," : "",
                         names[i].name);
        if (k > 0) n += (size_t)k;
    }
    return n;
}

int cy_duration_parse(const char *text, int64_t *ms)
{
    if (!text || !ms || !isdigit((unsigned char)text[0])) return CY_EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno == ERANGE) return CY_ERANGE;
    unsigned long long unit = 1;
    if (*end) {
        switch (*end) {
        case 's':
            unit = 1;
            break;
        case 'm':
            unit = 60;
            break;
        case 'h':
            unit = 3600;
            break;
        case 'd':
            unit = 86400;
            break;
        default:
            return CY_EINVAL;
        }
        if (end[1]) return CY_EINVAL;
    }
    if (v == 0 || v > (unsigned long long)CY_TOKEN_MAX_LIFETIME_S / unit) return CY_ERANGE;
    *ms = (int64_t)(v * unit) * 1000;
    return 0;
}
