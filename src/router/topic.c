/* topic: the structure of MQTT topic names and filters, and matching one
 * filter against one name (the rules are in topic.h).
 *
 * Everything here works on (pointer, length) and walks the bytes once, level
 * by level: a level is the bytes between two '/' (or an end), so "a//b" has
 * three levels and "/" has two empty ones. These functions check structure
 * only; the codec has already checked the UTF-8. cy_topic_matches is the
 * reference the tries in topic_tree.c and retain.c are tested against.
 */
#include "router/topic.h"

#include <string.h>

#define MAX_LEN 65535u
#define SHARE_PREFIX "$share/"
#define SHARE_PREFIX_LEN 7u

/* End of the level starting at s[i]: the index of the next '/' or len. */
static size_t level_end(const char *s, size_t i, size_t len)
{
    const char *slash = memchr(s + i, '/', len - i);
    return slash ? (size_t)(slash - s) : len;
}

bool cy_topic_valid_name(const char *name, size_t len)
{
    if (!name || len == 0 || len > MAX_LEN) return false;
    for (size_t i = 0; i < len; i++)
        if (name[i] == '+' || name[i] == '#') return false;
    return true;
}

bool cy_topic_reserved_event(const char *t, size_t len)
{
    static const char rsv[] = CY_TOPIC_RESERVED_EVENT;
    const size_t rl = sizeof(rsv) - 1;
    const char *name = NULL;
    if (!t) return false;
    if (len > 7 && memcmp(t, "events/", 7) == 0) {
        name = t + 7;
    } else if (len > 8 && memcmp(t, "devices/", 8) == 0) {
        const char *slash = memchr(t + 8, '/', len - 8);
        size_t rest = slash ? len - (size_t)(slash + 1 - t) : 0;
        if (slash && rest > 7 && memcmp(slash + 1, "events/", 7) == 0) name = slash + 8;
    }
    return name && (size_t)(t + len - name) >= rl && memcmp(name, rsv, rl) == 0;
}

/* A filter without the $share prefix: wildcards alone in their level, '#'
 * only in the last one. */
static bool valid_plain_filter(const char *f, size_t len)
{
    if (len == 0) return false;
    for (size_t i = 0; i < len; i++) {
        if (f[i] != '+' && f[i] != '#') continue;
        bool alone = (i == 0 || f[i - 1] == '/') && (i + 1 == len || f[i + 1] == '/');
        if (!alone) return false;
        if (f[i] == '#' && i + 1 != len) return false;
    }
    return true;
}

bool cy_topic_split_shared(const char *filter, size_t len, const char **group, size_t *group_len,
                           const char **f, size_t *f_len)
{
    if (!filter || len <= SHARE_PREFIX_LEN || memcmp(filter, SHARE_PREFIX, SHARE_PREFIX_LEN) != 0)
        return false;
    size_t gend = level_end(filter, SHARE_PREFIX_LEN, len);
    if (gend == len) return false; /* "$share/g": no filter part */
    if (group) *group = filter + SHARE_PREFIX_LEN;
    if (group_len) *group_len = gend - SHARE_PREFIX_LEN;
    if (f) *f = filter + gend + 1;
    if (f_len) *f_len = len - gend - 1;
    return true;
}

bool cy_topic_valid_filter(const char *filter, size_t len)
{
    if (!filter || len == 0 || len > MAX_LEN) return false;
    if (len >= SHARE_PREFIX_LEN && memcmp(filter, SHARE_PREFIX, SHARE_PREFIX_LEN) == 0) {
        const char *g, *f;
        size_t glen, flen;
        if (!cy_topic_split_shared(filter, len, &g, &glen, &f, &flen)) return false;
        if (glen == 0) return false;
        for (size_t i = 0; i < glen; i++)
            if (g[i] == '+' || g[i] == '#') return false;
        return valid_plain_filter(f, flen);
    }
    return valid_plain_filter(filter, len);
}

bool cy_topic_matches(const char *filter, size_t flen, const char *name, size_t nlen)
{
    if (flen == 0 || nlen == 0) return false;
    if (name[0] == '$' && (filter[0] == '+' || filter[0] == '#')) return false;
    size_t f = 0, n = 0;
    for (;;) {
        size_t fe = level_end(filter, f, flen);
        if (fe - f == 1 && filter[f] == '#') return true;
        size_t ne = level_end(name, n, nlen);
        bool plus = fe - f == 1 && filter[f] == '+';
        if (!plus && (fe - f != ne - n || memcmp(filter + f, name + n, fe - f) != 0)) return false;
        bool flast = fe == flen, nlast = ne == nlen;
        if (flast && nlast) return true;
        /* The name ended: only a final "/#" still matches (its parent level). */
        if (nlast) return flen - fe == 2 && filter[fe + 1] == '#';
        if (flast) return false;
        f = fe + 1;
        n = ne + 1;
    }
}
