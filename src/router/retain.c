/* retain: retained messages, one opaque value per topic name, in a trie
 * keyed by topic level, answering "which retained values match this filter"
 * when a client subscribes.
 *
 * This is the subscription tree turned around: the tree stores names and the
 * query is a filter. Walking the filter's levels from the root, a literal
 * level follows one child (a hash lookup, topic_trie.h), '+' follows every
 * child, and '#' takes the node itself (the parent level: "a/#" matches "a")
 * and its whole subtree. At the root '+' and '#' skip the children whose
 * level starts with '$', so "#" does not return "$SYS/..." values.
 *
 * Nodes store only their own level, not the full name: the name handed to
 * the callback is rebuilt by walking up the parent pointers into one buffer
 * the size of the longest name ever stored. The walks use parent pointers
 * and bucket order instead of recursion or a stack, so depth costs nothing,
 * and a node with no value and no children is pruned at once.
 *
 * Accounting: a node with a charged value remembers its cost and a pointer
 * to its owner's record (one per owner that holds at least one charged
 * value, in a map keyed by the owner's id, freed when its count reaches
 * zero), so admitting, replacing and clearing are O(topic levels) with no
 * scan of the tree.
 */
#include "router/topic.h"

#include <string.h>

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "core/cy_map.h"
#include "router/topic_trie.h"

/* Filter levels whose start offset a match remembers (on the stack). */
#define CACHE_LEVELS 64u
#define MAX_NAME 65535u

/* What one owner's charged values cost. */
typedef struct rowner {
    cy_retain_usage use;
    size_t len;
    char id[]; /* the map key, len bytes */
} rowner;

typedef struct rnode {
    cy_trie_node t; /* first member: a cy_trie_node * is an rnode * */
    void *value;    /* NULL: no retained value here (an inner node) */
    uint64_t bytes; /* what value is charged; 0 = not charged */
    rowner *owner;  /* whose it is, or NULL (nobody known, or not charged) */
} rnode;

struct cy_retain {
    rnode root;          /* key "", never holds a value, never pruned */
    size_t count;        /* values held */
    cy_retain_usage use; /* charged values */
    cy_map owners;       /* owner id -> rowner */
    char *namebuf;       /* rebuilds names for cy_retain_match */
    size_t namecap;      /* bytes of namebuf, >= every stored name's length */
};

typedef void (*match_cb)(void *ctx, const char *name, size_t len, void *value);

static rnode *parent_of(const rnode *n)
{
    return (rnode *)n->t.parent;
}

static void prune(cy_retain *r, rnode *n)
{
    while (n != &r->root && !n->value && n->t.nchildren == 0) {
        rnode *p = parent_of(n);
        cy_trie_unlink(&n->t);
        cy_trie_fini(&n->t);
        cy_free(n);
        n = p;
    }
}

/* The node of topic name, or NULL. With create, make the missing nodes;
 * then NULL means out of memory and the nodes made are pruned again. */
static rnode *walk(cy_retain *r, const char *name, size_t len, bool create)
{
    rnode *n = &r->root;
    size_t i = 0;
    for (;;) {
        const char *slash = memchr(name + i, '/', len - i);
        size_t e = slash ? (size_t)(slash - name) : len;
        uint32_t h = cy_trie_hash(name + i, e - i);
        rnode *c = (rnode *)cy_trie_find(&n->t, name + i, e - i, h);
        if (!c) {
            if (!create) return NULL;
            c = cy_calloc(1, sizeof *c + (e - i) + 1);
            if (!c) {
                prune(r, n);
                return NULL;
            }
            char *k = (char *)(c + 1);
            memcpy(k, name + i, e - i);
            cy_trie_init(&c->t, k, (uint32_t)(e - i), h);
            cy_trie_link(&n->t, &c->t);
        }
        n = c;
        if (e == len) return n;
        i = e + 1;
    }
}

static void free_owner(void *ctx, void *value)
{
    (void)ctx;
    cy_free(value);
}

/* Take n's charge off the totals and its owner (freed at zero). */
static void uncharge(cy_retain *r, rnode *n)
{
    if (!n->bytes) return;
    r->use.count--;
    r->use.bytes -= n->bytes;
    rowner *o = n->owner;
    if (o) {
        o->use.count--;
        o->use.bytes -= n->bytes;
        if (o->use.count == 0) {
            cy_map_del(&r->owners, o->id, o->len);
            cy_free(o);
        }
    }
    n->bytes = 0;
    n->owner = NULL;
}

/* The record of owner, made (with nothing charged) if absent; NULL: out
 * of memory. */
static rowner *owner_get(cy_retain *r, const char *id, size_t len)
{
    rowner *o = cy_map_get(&r->owners, id, len);
    if (o) return o;
    o = cy_calloc(1, sizeof(*o) + len + 1);
    if (!o) return NULL;
    memcpy(o->id, id, len);
    o->len = len;
    if (cy_map_put(&r->owners, o->id, len, o)) {
        cy_free(o);
        return NULL;
    }
    return o;
}

int cy_retain_new(cy_retain **out)
{
    cy_retain *r = cy_calloc(1, sizeof *r);
    if (!r) return CY_ENOMEM;
    cy_trie_init(&r->root.t, "", 0, cy_trie_hash("", 0));
    cy_map_init(&r->owners);
    *out = r;
    return 0;
}

void cy_retain_free(cy_retain *r, void (*release)(void *value))
{
    if (!r) return;
    /* Post-order without a stack, as in cy_topic_tree_free. */
    cy_trie_node *n = &r->root.t, *c;
    while ((c = cy_trie_first(n)))
        n = c;
    while (n != &r->root.t) {
        cy_trie_node *s = cy_trie_next(n), *p = n->parent;
        rnode *rn = (rnode *)n;
        if (rn->value && release) release(rn->value);
        cy_trie_fini(n);
        cy_free(rn);
        if (s) {
            n = s;
            while ((c = cy_trie_first(n)))
                n = c;
        } else {
            n = p;
        }
    }
    cy_trie_fini(&r->root.t);
    cy_map_each(&r->owners, free_owner, NULL);
    cy_map_fini(&r->owners);
    cy_free(r->namebuf);
    cy_free(r);
}

int cy_retain_set(cy_retain *r, const char *name, size_t len, void *value, void **old)
{
    return cy_retain_set_charged(r, name, len, value, 0, NULL, 0, old);
}

int cy_retain_set_charged(cy_retain *r, const char *name, size_t len, void *value, uint64_t bytes,
                          const char *owner, size_t owner_len, void **old)
{
    if (old) *old = NULL;
    if (!r || !cy_topic_valid_name(name, len) || (!owner && owner_len)) return CY_EINVAL;
    if (!value) {
        rnode *n = walk(r, name, len, false);
        if (!n || !n->value) return 0;
        if (old) *old = n->value;
        uncharge(r, n);
        n->value = NULL;
        r->count--;
        prune(r, n);
        return 0;
    }
    if (len > r->namecap) {
        size_t cap = r->namecap * 2 > len ? r->namecap * 2 : len;
        if (cap > MAX_NAME) cap = MAX_NAME;
        char *b = cy_realloc(r->namebuf, cap);
        if (!b) return CY_ENOMEM;
        r->namebuf = b;
        r->namecap = cap;
    }
    rowner *o = NULL;
    if (bytes && owner_len && !(o = owner_get(r, owner, owner_len))) return CY_ENOMEM;
    rnode *n = walk(r, name, len, true);
    if (!n) {
        if (o && o->use.count == 0) { /* made for this call */
            cy_map_del(&r->owners, o->id, o->len);
            cy_free(o);
        }
        return CY_ENOMEM;
    }
    /* Charge the new value before uncharging the old one: when both are
     * the same owner's, its record must not reach zero (and be freed) in
     * between. */
    if (bytes) {
        r->use.count++;
        r->use.bytes += bytes;
        if (o) {
            o->use.count++;
            o->use.bytes += bytes;
        }
    }
    if (n->value) {
        uncharge(r, n);
    } else {
        r->count++;
    }
    if (old) *old = n->value;
    n->value = value;
    n->bytes = bytes;
    n->owner = o;
    return 0;
}

int cy_retain_admit(const cy_retain *r, const cy_retain_limits *l, const char *name, size_t len,
                    uint64_t bytes, const char *owner, size_t owner_len, int *which)
{
    if (which) *which = 0;
    if (!r || !l || bytes == 0) return 0;
    /* walk() without create changes nothing. */
    rnode *n = cy_topic_valid_name(name, len) ? walk((cy_retain *)r, name, len, false) : NULL;
    uint64_t old_bytes = n && n->value ? n->bytes : 0; /* 0: nothing charged there */
    int over = 0;
    if (l->count && !old_bytes && r->use.count + 1 > l->count)
        over = CY_RETAIN_OVER_COUNT;
    else if (l->bytes && bytes > old_bytes && r->use.bytes - old_bytes + bytes > l->bytes)
        over = CY_RETAIN_OVER_BYTES;
    else if (owner_len && (l->owner_count || l->owner_bytes)) {
        const rowner *o = cy_map_get(&r->owners, owner, owner_len);
        bool same = o && old_bytes && n->owner == o; /* replacing its own value */
        cy_retain_usage u = o ? o->use : (cy_retain_usage){0, 0};
        uint64_t mine = same ? old_bytes : 0;
        if (l->owner_count && !same && u.count + 1 > l->owner_count)
            over = CY_RETAIN_OVER_OWNER_COUNT;
        else if (l->owner_bytes && bytes > mine && u.bytes - mine + bytes > l->owner_bytes)
            over = CY_RETAIN_OVER_OWNER_BYTES;
    }
    if (!over) return 0;
    if (which) *which = over;
    return CY_EQUOTA;
}

cy_retain_usage cy_retain_usage_total(const cy_retain *r)
{
    return r ? r->use : (cy_retain_usage){0, 0};
}

cy_retain_usage cy_retain_usage_of(const cy_retain *r, const char *owner, size_t owner_len)
{
    const rowner *o = r && owner_len ? cy_map_get(&r->owners, owner, owner_len) : NULL;
    return o ? o->use : (cy_retain_usage){0, 0};
}

void *cy_retain_get(cy_retain *r, const char *name, size_t len)
{
    if (!r || !name || len == 0 || len > MAX_NAME) return NULL;
    rnode *n = walk(r, name, len, false);
    return n ? n->value : NULL;
}

size_t cy_retain_count(const cy_retain *r)
{
    return r ? r->count : 0;
}

/* Rebuild n's name right-aligned in namebuf and hand it to fn. */
static void report(cy_retain *r, rnode *n, match_cb fn, void *ctx)
{
    if (!n->value) return;
    char *end = r->namebuf + r->namecap, *p = end;
    for (cy_trie_node *t = &n->t;;) {
        p -= t->keylen;
        memcpy(p, t->key, t->keylen);
        t = t->parent;
        if (t == &r->root.t) break;
        *--p = '/';
    }
    fn(ctx, p, (size_t)(end - p), n->value);
}

static bool skip(const cy_retain *r, const cy_trie_node *c)
{
    return c->parent == &r->root.t && c->keylen > 0 && c->key[0] == '$';
}

/* c, or the first sibling after it, that the '$' rule lets a wildcard see. */
static cy_trie_node *visible(const cy_retain *r, cy_trie_node *c)
{
    while (c && skip(r, c))
        c = cy_trie_next(c);
    return c;
}

/* '#' at node s: s itself, then everything below it (preorder). */
static void report_subtree(cy_retain *r, rnode *s, match_cb fn, void *ctx)
{
    cy_trie_node *top = &s->t, *c;
    if (s != &r->root) report(r, s, fn, ctx);
    c = visible(r, cy_trie_first(top));
    while (c) {
        report(r, (rnode *)c, fn, ctx);
        cy_trie_node *d = cy_trie_first(c);
        if (d) {
            c = d;
            continue;
        }
        for (;;) {
            cy_trie_node *nx = visible(r, cy_trie_next(c));
            if (nx) {
                c = nx;
                break;
            }
            c = c->parent;
            if (c == top) return;
        }
    }
}

void cy_retain_match(cy_retain *r, const char *filter, size_t len,
                     void (*fn)(void *ctx, const char *name, size_t len, void *value), void *ctx)
{
    if (!r || !fn || !cy_topic_valid_filter(filter, len)) return;
    if (cy_topic_split_shared(filter, len, NULL, NULL, NULL, NULL)) return;
    if (r->count == 0) return;
    size_t start[CACHE_LEVELS]; /* start[d]: offset of filter level d */
    rnode *n = &r->root;
    size_t depth = 0; /* n's depth: the filter level its children are matched against */
    size_t off = 0;   /* start of filter level depth; len + 1 past the end */
    size_t end = 0;   /* end of filter level depth */
    start[0] = 0;
    for (;;) {
        cy_trie_node *next = NULL;
        if (off > len) {
            report(r, n, fn, ctx);
        } else {
            const char *slash = memchr(filter + off, '/', len - off);
            end = slash ? (size_t)(slash - filter) : len;
            const char *lv = filter + off;
            size_t lvlen = end - off;
            if (lvlen == 1 && lv[0] == '#')
                report_subtree(r, n, fn, ctx);
            else if (lvlen == 1 && lv[0] == '+')
                next = visible(r, cy_trie_first(&n->t));
            else if (n->t.nchildren)
                next = cy_trie_find(&n->t, lv, lvlen, cy_trie_hash(lv, lvlen));
        }
        /* Back up until a '+' level has a sibling left to try. */
        while (!next) {
            if (n == &r->root) return;
            rnode *p = parent_of(n);
            depth--;
            end = off - 1;
            if (depth < CACHE_LEVELS) {
                off = start[depth];
            } else {
                off = end;
                while (off > 0 && filter[off - 1] != '/')
                    off--;
            }
            if (end - off == 1 && filter[off] == '+') next = visible(r, cy_trie_next(&n->t));
            n = p;
        }
        n = (rnode *)next;
        depth++;
        off = end + 1;
        if (depth < CACHE_LEVELS) start[depth] = off;
    }
}
