/* acl: the parser and the matcher of the operator's ACL file (acl.h).
 *
 * Parsing keeps a copy of the text; a rule is its owner (the anonymous
 * block, the patterns, or a user block), its access and its levels: (offset
 * into the copy, length, kind), kind one of a literal, +, #, %c, %u. Once
 * every line is read, the rules are sorted by owner, denies first, so that
 * each owner's rules are one run of the array with its denies at the front,
 * and the user blocks are entered in a map by username (the key is the
 * username's bytes in the copy).
 *
 * A check walks the topic level by level beside a rule's levels, without
 * splitting the topic first: most rules differ at their first or second
 * level, so a rule costs a few byte compares.
 */
#include "device/acl.h"

#include "core/cy_alloc.h"
#include "core/cy_map.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { LEV_LIT, LEV_PLUS, LEV_HASH, LEV_CID, LEV_USER };

/* Owners: the anonymous block, the patterns, then user k at USER0 + k. */
enum { OWN_ANON = 0, OWN_PAT = 1, OWN_USER0 = 2 };

#define RULE_DENY 0 /* access of a deny rule */

typedef struct acl_lev {
    uint32_t off; /* of the level's bytes in the text */
    uint16_t len; /* bytes */
    uint8_t kind; /* LEV_* */
} acl_lev;

typedef struct acl_rule {
    uint32_t lev;   /* index of its first level in a->levs */
    uint32_t nlev;  /* levels, >= 1 */
    uint32_t owner; /* OWN_* (for the sort) */
    uint32_t line;  /* in the file (for the sort: file order within an owner) */
    uint8_t access; /* CY_ACL_READ | CY_ACL_WRITE, or RULE_DENY */
    bool subst;     /* has a %c or %u level */
} acl_rule;

/* One owner's rules: a run of a->rules, its denies first. */
typedef struct acl_block {
    uint32_t first, n, ndeny;
    uint32_t name_off, name_len; /* a user block's username in the text */
} acl_block;

struct cy_acl {
    char *text; /* the file's bytes, NUL-terminated */
    size_t text_len;
    acl_rule *rules;
    size_t nrules, cap_rules;
    acl_lev *levs;
    size_t nlevs, cap_levs;
    acl_block anon, pat;
    acl_block *users; /* user k's block */
    size_t nusers, cap_users;
    cy_map by_user; /* username -> acl_block */
    bool has_deny;
};

/* ---- errors ---- */

static void say(char *err, size_t errlen, const char *name, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void say(char *err, size_t errlen, const char *name, unsigned line, const char *fmt, ...)
{
    if (!err || !errlen) return;
    int n =
        line ? snprintf(err, errlen, "%s:%u: ", name, line) : snprintf(err, errlen, "%s: ", name);
    if (n < 0 || (size_t)n >= errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

/* A word of the file for an error line: at most 64 bytes, control bytes
 * shown as '?'. */
static const char *shown(const char *p, size_t len, char out[68])
{
    size_t n = len > 64 ? 64 : len;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        out[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    if (len > 64) {
        memcpy(out + 64, "...", 3);
        n = 67;
    }
    out[n] = '\0';
    return out;
}

/* ---- building ---- */

void cy_acl_free(cy_acl *a)
{
    if (!a) return;
    cy_map_fini(&a->by_user);
    cy_free(a->users);
    cy_free(a->levs);
    cy_free(a->rules);
    cy_free(a->text);
    cy_free(a);
}

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap * 2 : 16;
    while (n < need)
        n *= 2;
    void *q = cy_realloc(*p, n * size);
    if (!q) return -1;
    *p = q;
    *cap = n;
    return 0;
}

static bool blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* The user block named by text[off, off+len), made if new. Returns its
 * owner number, or -1 (out of memory). */
static long user_owner(cy_acl *a, uint32_t off, uint32_t len)
{
    /* While parsing, the map's values are owner numbers + 1 (never NULL);
     * they become block pointers at the end. */
    void *v = cy_map_get(&a->by_user, a->text + off, len);
    if (v) return (long)((uintptr_t)v - 1) + OWN_USER0;
    if (grow((void **)&a->users, &a->cap_users, a->nusers + 1, sizeof(acl_block))) return -1;
    size_t k = a->nusers;
    if (cy_map_put(&a->by_user, a->text + off, len, (void *)(uintptr_t)(k + 1))) return -1;
    a->users[k] = (acl_block){.name_off = off, .name_len = len};
    a->nusers++;
    return (long)(k + OWN_USER0);
}

/* Check the filter text[off, off+len) and append its levels. Returns 0, or
 * -1 with the error said, or -2 (out of memory). */
static int compile_topic(cy_acl *a, acl_rule *r, uint32_t off, size_t len, bool pattern, char *err,
                         size_t errlen, const char *name, unsigned line)
{
    const char *t = a->text + off;
    r->lev = (uint32_t)a->nlevs;
    r->nlev = 0;
    r->subst = false;
    size_t start = 0;
    for (;;) {
        const char *slash = memchr(t + start, '/', len - start);
        size_t end = slash ? (size_t)(slash - t) : len;
        const char *l = t + start;
        size_t ll = end - start;
        uint8_t kind = LEV_LIT;
        if (ll == 1 && l[0] == '+') {
            kind = LEV_PLUS;
        } else if (ll == 1 && l[0] == '#') {
            if (slash) {
                say(err, errlen, name, line, "'#' must be the last level of a topic filter");
                return -1;
            }
            kind = LEV_HASH;
        } else if (memchr(l, '+', ll) || memchr(l, '#', ll)) {
            say(err, errlen, name, line, "'+' and '#' must each be a whole topic level");
            return -1;
        } else if (pattern && ll == 2 && l[0] == '%' && (l[1] == 'c' || l[1] == 'u')) {
            kind = l[1] == 'c' ? LEV_CID : LEV_USER;
            r->subst = true;
        }
        if (grow((void **)&a->levs, &a->cap_levs, a->nlevs + 1, sizeof(acl_lev))) return -2;
        a->levs[a->nlevs++] = (acl_lev){(uint32_t)(off + start), (uint16_t)ll, kind};
        r->nlev++;
        if (!slash) break;
        start = end + 1;
    }
    return 0;
}

static int access_of(const char *w, size_t n)
{
    if (n == 4 && !memcmp(w, "read", 4)) return CY_ACL_READ;
    if (n == 5 && !memcmp(w, "write", 5)) return CY_ACL_WRITE;
    if (n == 9 && !memcmp(w, "readwrite", 9)) return CY_ACL_READ | CY_ACL_WRITE;
    if (n == 4 && !memcmp(w, "deny", 4)) return RULE_DENY;
    return -1;
}

/* Where topic lines go: an owner number, or the user a user line named,
 * whose block is made at its first topic line (so there are never more
 * user blocks than rules). */
typedef struct parse_state {
    long owner;        /* OWN_ANON, or a user block's number once made */
    bool pending;      /* a user line named a user whose block is not made yet */
    uint32_t user_off; /* that username in the text */
    uint32_t user_len;
} parse_state;

/* One line, text[off, off+len), its blanks at both ends already trimmed and
 * not a comment. Returns 0, -1 (error said) or -2 (out of memory). */
static int parse_line(cy_acl *a, uint32_t off, size_t len, parse_state *ps, char *err,
                      size_t errlen, const char *name, unsigned line)
{
    const char *s = a->text + off;
    char w1[68], w2[68];
    size_t kw = 0;
    while (kw < len && !blank(s[kw]))
        kw++;
    size_t rest = kw;
    while (rest < len && blank(s[rest]))
        rest++;
    bool topic = kw == 5 && !memcmp(s, "topic", 5);
    bool pattern = kw == 7 && !memcmp(s, "pattern", 7);
    if (kw == 4 && !memcmp(s, "user", 4)) {
        if (rest == len) {
            say(err, errlen, name, line, "user: no username");
            return -1;
        }
        ps->pending = true;
        ps->user_off = (uint32_t)(off + rest);
        ps->user_len = (uint32_t)(len - rest);
        return 0;
    }
    if (!topic && !pattern) {
        say(err, errlen, name, line, "unknown keyword '%s' (expected topic, pattern or user)",
            shown(s, kw, w1));
        return -1;
    }
    if (rest == len) {
        say(err, errlen, name, line, "%s: no topic", topic ? "topic" : "pattern");
        return -1;
    }
    /* One word: the topic, readwrite. More: an access word, then the topic
     * (the rest of the line, which may hold spaces). */
    size_t w = rest;
    while (w < len && !blank(s[w]))
        w++;
    size_t t = w;
    while (t < len && blank(s[t]))
        t++;
    int access = CY_ACL_READ | CY_ACL_WRITE;
    size_t toff = rest, tlen = len - rest;
    if (t < len) {
        access = access_of(s + rest, w - rest);
        if (access < 0) {
            say(err, errlen, name, line,
                "unknown access '%s' (read, write, readwrite or deny; a topic with a space "
                "needs one)",
                shown(s + rest, w - rest, w1));
            return -1;
        }
        toff = t;
        tlen = len - t;
    } else if (access_of(s + rest, len - rest) >= 0) {
        say(err, errlen, name, line, "'%s' with no topic after it",
            shown(s + rest, len - rest, w2));
        return -1;
    }
    if (a->nrules >= CY_ACL_MAX_RULES) {
        say(err, errlen, name, line, "more than %d rules", CY_ACL_MAX_RULES);
        return -1;
    }
    if (topic && ps->pending) {
        long o = user_owner(a, ps->user_off, ps->user_len);
        if (o < 0) return -2;
        ps->owner = o;
        ps->pending = false;
    }
    if (grow((void **)&a->rules, &a->cap_rules, a->nrules + 1, sizeof(acl_rule))) return -2;
    acl_rule *r = &a->rules[a->nrules];
    r->owner = pattern ? OWN_PAT : (uint32_t)ps->owner;
    r->line = line;
    r->access = (uint8_t)access;
    int rc = compile_topic(a, r, (uint32_t)(off + toff), tlen, pattern, err, errlen, name, line);
    if (rc) return rc;
    if (access == RULE_DENY) a->has_deny = true;
    a->nrules++;
    return 0;
}

static int by_owner(const void *x, const void *y)
{
    const acl_rule *a = x, *b = y;
    if (a->owner != b->owner) return a->owner < b->owner ? -1 : 1;
    bool da = a->access == RULE_DENY, db = b->access == RULE_DENY;
    if (da != db) return da ? -1 : 1;
    return a->line < b->line ? -1 : a->line > b->line ? 1 : 0;
}

/* Sort the rules into owner runs, denies first, and point each block at
 * its run. Returns 0 or -1 (out of memory). */
static int finish(cy_acl *a)
{
    if (a->nrules) qsort(a->rules, a->nrules, sizeof(acl_rule), by_owner);
    for (size_t i = 0; i < a->nrules;) {
        uint32_t o = a->rules[i].owner;
        size_t j = i;
        uint32_t ndeny = 0;
        while (j < a->nrules && a->rules[j].owner == o) {
            if (a->rules[j].access == RULE_DENY) ndeny++;
            j++;
        }
        acl_block *b = o == OWN_ANON ? &a->anon : o == OWN_PAT ? &a->pat : &a->users[o - OWN_USER0];
        b->first = (uint32_t)i;
        b->n = (uint32_t)(j - i);
        b->ndeny = ndeny;
        i = j;
    }
    /* The map's values become the blocks (a->users no longer moves). A user
     * line with no topic line after it made no block: only the patterns
     * apply to that user, as to a user the file never names. */
    cy_map_fini(&a->by_user);
    cy_map_init(&a->by_user);
    for (size_t k = 0; k < a->nusers; k++) {
        acl_block *b = &a->users[k];
        if (cy_map_put(&a->by_user, a->text + b->name_off, b->name_len, b)) return -1;
    }
    return 0;
}

cy_acl *cy_acl_parse(const char *name, const char *text, size_t len, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!name) name = "acl_file";
    if (!text && len) {
        say(err, errlen, name, 0, "no text");
        return NULL;
    }
    if (len > CY_ACL_MAX_FILE) {
        say(err, errlen, name, 0, "larger than %d bytes", CY_ACL_MAX_FILE);
        return NULL;
    }
    cy_acl *a = cy_calloc(1, sizeof(*a));
    if (!a) goto nomem;
    cy_map_init(&a->by_user);
    a->text = cy_malloc(len + 1);
    if (!a->text) goto nomem;
    if (len) memcpy(a->text, text, len);
    a->text[len] = '\0';
    a->text_len = len;
    parse_state ps = {.owner = OWN_ANON};
    unsigned line = 0;
    size_t pos = 0;
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) pos = 3; /* a UTF-8 byte order mark */
    while (pos < len) {
        const char *nl = memchr(a->text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - a->text) : len;
        line++;
        size_t b = pos, e = end;
        pos = nl ? end + 1 : len;
        if (e - b > CY_ACL_MAX_LINE) {
            say(err, errlen, name, line, "line longer than %d bytes", CY_ACL_MAX_LINE);
            goto fail;
        }
        if (memchr(a->text + b, '\0', e - b)) {
            say(err, errlen, name, line, "a NUL byte");
            goto fail;
        }
        while (b < e && blank(a->text[b]))
            b++;
        while (e > b && blank(a->text[e - 1]))
            e--;
        if (b == e || a->text[b] == '#') continue;
        int rc = parse_line(a, (uint32_t)b, e - b, &ps, err, errlen, name, line);
        if (rc == -2) goto nomem;
        if (rc) goto fail;
    }
    if (finish(a)) goto nomem;
    return a;
nomem:
    say(err, errlen, name, 0, "out of memory");
fail:
    cy_acl_free(a);
    return NULL;
}

cy_acl *cy_acl_load(const char *path, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!path || !path[0]) {
        say(err, errlen, "acl_file", 0, "no file named");
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        say(err, errlen, path, 0, "%s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && !S_ISREG(st.st_mode)) {
        fclose(f);
        say(err, errlen, path, 0, "not a regular file");
        return NULL;
    }
    /* Read at most one byte past the limit: enough to know it is over. */
    size_t cap = 65536, n = 0;
    bool oom = false;
    char *buf = cy_malloc(cap);
    if (!buf) {
        fclose(f);
        say(err, errlen, path, 0, "out of memory");
        return NULL;
    }
    for (;;) {
        if (n == cap) {
            if (cap > CY_ACL_MAX_FILE) break; /* one byte past the limit is read */
            size_t ncap =
                cap * 2 > (size_t)CY_ACL_MAX_FILE + 1 ? (size_t)CY_ACL_MAX_FILE + 1 : cap * 2;
            char *nb = cy_realloc(buf, ncap);
            if (!nb) {
                oom = true;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int saved = errno;
    bool bad = ferror(f) != 0;
    fclose(f);
    cy_acl *a = NULL;
    if (oom)
        say(err, errlen, path, 0, "out of memory");
    else if (bad)
        say(err, errlen, path, 0, "read error: %s", strerror(saved));
    else if (n > CY_ACL_MAX_FILE)
        say(err, errlen, path, 0, "larger than %d bytes", CY_ACL_MAX_FILE);
    else
        a = cy_acl_parse(path, buf, n, err, errlen);
    cy_free(buf);
    return a;
}

/* ---- matching ---- */

/* Is the topic level [p, p+n) the client's id or username (v, vl)? An
 * empty value matches nothing (as in Mosquitto). */
static bool level_is(const char *p, size_t n, const char *v, size_t vl)
{
    return v && vl && n == vl && memcmp(p, v, n) == 0;
}

typedef struct who {
    const char *cid, *user;
    size_t cidl, userl;
} who;

/* Does one rule level (not #) take the topic level [p, p+n)? */
static bool level_match(const cy_acl *a, const acl_lev *L, const who *w, const char *p, size_t n)
{
    switch (L->kind) {
    case LEV_PLUS:
        return true;
    case LEV_CID:
        return level_is(p, n, w->cid, w->cidl);
    case LEV_USER:
        return level_is(p, n, w->user, w->userl);
    default:
        return n == L->len && memcmp(p, a->text + L->off, n) == 0;
    }
}

/* Does rule r match the topic name t? */
static bool matches(const cy_acl *a, const acl_rule *r, const who *w, const char *t, size_t len)
{
    const acl_lev *L = a->levs + r->lev;
    /* A wildcard (or a substitution) first level takes no $ topic. */
    if (len && t[0] == '$' && L[0].kind != LEV_LIT) return false;
    size_t pos = 0; /* start of the topic's next level; len + 1 once none is left */
    for (uint32_t i = 0; i < r->nlev; i++) {
        if (L[i].kind == LEV_HASH) return true; /* the rest, or nothing (the parent) */
        if (pos > len) return false;
        const char *slash = memchr(t + pos, '/', len - pos);
        size_t end = slash ? (size_t)(slash - t) : len;
        if (!level_match(a, &L[i], w, t + pos, end - pos)) return false;
        pos = end + 1;
    }
    return pos > len;
}

/* Does rule r cover the filter f: does it match every topic f can match? */
static bool covers(const cy_acl *a, const acl_rule *r, const who *w, const char *f, size_t len)
{
    const acl_lev *L = a->levs + r->lev;
    /* f names a $ topic's first level itself: a wildcard first level does
     * not cover it. (A filter starting with a wildcard matches no $ topic.) */
    if (len && f[0] == '$' && L[0].kind != LEV_LIT) return false;
    size_t pos = 0;
    for (uint32_t i = 0; i < r->nlev; i++) {
        if (L[i].kind == LEV_HASH) return true;
        if (pos > len) return false; /* f stops short of a level the rule requires */
        const char *slash = memchr(f + pos, '/', len - pos);
        size_t end = slash ? (size_t)(slash - f) : len;
        const char *p = f + pos;
        size_t n = end - pos;
        if (n == 1 && p[0] == '#') return false; /* only # covers # */
        if (n == 1 && p[0] == '+') {
            if (L[i].kind != LEV_PLUS) return false;
        } else if (!level_match(a, &L[i], w, p, n)) {
            return false;
        }
        pos = end + 1;
    }
    return pos > len; /* f goes deeper than the rule */
}

static bool hit(const cy_acl *a, const acl_rule *r, const who *w, const char *t, size_t len,
                int access)
{
    return access == CY_ACL_SUBSCRIBE ? covers(a, r, w, t, len) : matches(a, r, w, t, len);
}

static bool has_wild(const char *s, size_t n)
{
    return s && (memchr(s, '+', n) || memchr(s, '#', n));
}

bool cy_acl_check(const cy_acl *a, const char *client_id, size_t client_id_len,
                  const char *username, size_t username_len, const char *t, size_t len, int access)
{
    if (!a) return true;
    if (!t || (access != CY_ACL_READ && access != CY_ACL_WRITE && access != CY_ACL_SUBSCRIBE))
        return false;
    who w = {client_id, username, client_id ? client_id_len : 0, username ? username_len : 0};
    const acl_block *own = &a->anon;
    if (username) own = cy_map_get(&a->by_user, username, username_len);
    const acl_block *pat = &a->pat;
    int need = access == CY_ACL_WRITE ? CY_ACL_WRITE : CY_ACL_READ;
    /* 1. any deny that applies */
    if (own)
        for (uint32_t i = 0; i < own->ndeny; i++)
            if (hit(a, &a->rules[own->first + i], &w, t, len, access)) return false;
    for (uint32_t i = 0; i < pat->ndeny; i++)
        if (hit(a, &a->rules[pat->first + i], &w, t, len, access)) return false;
    /* 2. a grant */
    if (own)
        for (uint32_t i = own->ndeny; i < own->n; i++) {
            const acl_rule *r = &a->rules[own->first + i];
            if ((r->access & need) && hit(a, r, &w, t, len, access)) return true;
        }
    if (pat->n > pat->ndeny && !has_wild(w.cid, w.cidl) && !has_wild(w.user, w.userl))
        for (uint32_t i = pat->ndeny; i < pat->n; i++) {
            const acl_rule *r = &a->rules[pat->first + i];
            if ((r->access & need) && hit(a, r, &w, t, len, access)) return true;
        }
    return false;
}

bool cy_acl_has_deny(const cy_acl *a)
{
    return a && a->has_deny;
}

size_t cy_acl_rule_count(const cy_acl *a)
{
    return a ? a->nrules : 0;
}

size_t cy_acl_user_count(const cy_acl *a)
{
    return a ? a->nusers : 0;
}
