/* topic_tree: the subscription trie, answering "who is subscribed to this
 * topic" for every published message.
 *
 * Wildcard rules (MQTT 5 4.7): levels are split on '/', empty levels count.
 * '+' matches exactly one level, '#' matches its parent level and everything
 * below, and a filter starting with a wildcard never matches a topic starting
 * with '$'. So for the topic "a/b/c": "a/b/c", "a/+/c", "+/+/+", "a/#",
 * "a/b/c/#" and "#" match; "a/b", "a/+", "+/c" and "a/b/c/d" do not. "a/+"
 * matches "a/" (an empty level); "#" and "+/x" do not match "$SYS/x" but
 * "$SYS/#" and "$SYS/+" do.
 *
 * Shape: one node per filter level. A node's literal children are in a hash
 * table (topic_trie.h) so a level with 100k device ids costs one hash per
 * lookup; its '+' and '#' children are two dedicated pointers, so matching
 * a topic level visits at most three children: the exact one, '+' and '#'.
 * A node holds the subscriptions whose filter ends there: plain ones in an
 * array (owner, options, id), shared ones ("$share/g/filter", stored at the
 * node of filter) in a list of groups, each with its members and a round
 * robin cursor. A node with no subscriptions and no children is pruned at
 * once, so the tree's size follows the live subscriptions.
 *
 * Matching is a depth-first walk with no recursion and no allocation: at
 * each node it reports the '#' child, goes down to the exact child, then
 * to the '+' child, and comes back up through the parent pointers, taking
 * where the topic's level starts from a small array of the first 64 level
 * offsets (scanning back to the previous '/' for deeper levels). The hash
 * of each of those 64 levels is computed once per message however many
 * branches reach it. A filter of 32k empty levels therefore costs no stack.
 */
#include "router/topic.h"

#include <string.h>

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "router/topic_trie.h"

/* Levels whose offset and hash a match remembers (on the stack). */
#define CACHE_LEVELS 64u

typedef struct sub {
    void *owner;     /* opaque, never dereferenced */
    uint32_t sub_id; /* MQTT 5 subscription identifier, 0 for none */
    uint8_t opts;    /* CY_SUBOPT_* bits */
} sub;

typedef struct group {
    struct group *next;
    sub *members;    /* in join order, which is the round robin order */
    uint32_t n, cap; /* members used and allocated */
    uint32_t cursor; /* index of the member tried first for the next message */
    uint32_t namelen; /* the group name is name[7 .. 7 + namelen) */
    uint32_t fulllen; /* name[] holds the whole "$share/group/filter" */
    char name[];
} group;

typedef struct node {
    cy_trie_node t; /* first member: a cy_trie_node * is a node * */
    struct node *plus, *hash;
    sub *subs;
    uint32_t nsubs, capsubs;
    group *groups;
} node;

struct cy_topic_tree {
    node root;    /* key "", never pruned */
    size_t count; /* plain subscriptions plus shared members */
};

static node *parent_of(const node *n)
{
    return (node *)n->t.parent;
}

static bool node_empty(const node *n)
{
    return n->nsubs == 0 && !n->groups && !n->plus && !n->hash && n->t.nchildren == 0;
}

static void node_free(node *n)
{
    cy_trie_fini(&n->t);
    cy_free(n->subs);
    while (n->groups) {
        group *g = n->groups;
        n->groups = g->next;
        cy_free(g->members);
        cy_free(g);
    }
    cy_free(n);
}

/* Free n and its empty ancestors, stopping at the root or a node in use. */
static void prune(cy_topic_tree *t, node *n)
{
    while (n != &t->root && node_empty(n)) {
        node *p = parent_of(n);
        if (p->plus == n)
            p->plus = NULL;
        else if (p->hash == n)
            p->hash = NULL;
        else
            cy_trie_unlink(&n->t);
        node_free(n);
        n = p;
    }
}

/* The child of p for the filter level [key, key+len), created if missing.
 * NULL only when out of memory. */
static node *child_get(node *p, const char *key, size_t len, bool create)
{
    node **wild = NULL;
    uint32_t h = 0;
    if (len == 1 && key[0] == '+')
        wild = &p->plus;
    else if (len == 1 && key[0] == '#')
        wild = &p->hash;
    if (wild) {
        if (*wild || !create) return *wild;
    } else {
        h = cy_trie_hash(key, len);
        node *c = (node *)cy_trie_find(&p->t, key, len, h);
        if (c || !create) return c;
    }
    node *c = cy_calloc(1, sizeof *c + len + 1);
    if (!c) return NULL;
    char *k = (char *)(c + 1);
    memcpy(k, key, len);
    cy_trie_init(&c->t, k, (uint32_t)len, h);
    if (wild) {
        c->t.parent = &p->t;
        *wild = c;
    } else {
        cy_trie_link(&p->t, &c->t);
    }
    return c;
}

/* Walk filter f level by level from the root; create missing nodes if asked.
 * On failure (*last is the deepest node reached) returns NULL. */
static node *walk(cy_topic_tree *t, const char *f, size_t len, bool create, node **last)
{
    node *n = &t->root;
    size_t i = 0;
    for (;;) {
        const char *slash = memchr(f + i, '/', len - i);
        size_t e = slash ? (size_t)(slash - f) : len;
        node *c = child_get(n, f + i, e - i, create);
        if (!c) {
            *last = n;
            return NULL;
        }
        n = c;
        if (e == len) return n;
        i = e + 1;
    }
}

static group *group_find(node *n, const char *name, size_t len)
{
    for (group *g = n->groups; g; g = g->next)
        if (g->namelen == len && memcmp(g->name + 7, name, len) == 0) return g;
    return NULL;
}

/* Make room for one more entry in *arr. */
static int reserve(sub **arr, uint32_t n, uint32_t *cap)
{
    if (n < *cap) return 0;
    if (*cap > UINT32_MAX / 2) return CY_ENOMEM;
    uint32_t ncap = *cap ? *cap * 2 : 1;
    sub *a = cy_realloc(*arr, (size_t)ncap * sizeof *a);
    if (!a) return CY_ENOMEM;
    *arr = a;
    *cap = ncap;
    return 0;
}

/* Give memory back once an array is mostly empty; failure keeps the old one. */
static void shrink(sub **arr, uint32_t n, uint32_t *cap)
{
    if (n == 0) {
        cy_free(*arr);
        *arr = NULL;
        *cap = 0;
    } else if (*cap >= 16 && n < *cap / 4) {
        sub *a = cy_realloc(*arr, (size_t)(*cap / 2) * sizeof *a);
        if (a) {
            *arr = a;
            *cap /= 2;
        }
    }
}

static sub *sub_find(sub *arr, uint32_t n, const void *owner)
{
    for (uint32_t i = 0; i < n; i++)
        if (arr[i].owner == owner) return &arr[i];
    return NULL;
}

int cy_topic_tree_new(cy_topic_tree **out)
{
    cy_topic_tree *t = cy_calloc(1, sizeof *t);
    if (!t) return CY_ENOMEM;
    cy_trie_init(&t->root.t, "", 0, cy_trie_hash("", 0));
    *out = t;
    return 0;
}

static node *first_child(const node *n)
{
    cy_trie_node *c = cy_trie_first(&n->t);
    if (c) return (node *)c;
    return n->plus ? n->plus : n->hash;
}

/* The child of n's parent after n in the order: table, '+', '#'. */
static node *next_sibling(const node *n)
{
    const node *p = parent_of(n);
    if (n == p->hash) return NULL;
    if (n == p->plus) return p->hash;
    cy_trie_node *s = cy_trie_next(&n->t);
    if (s) return (node *)s;
    return p->plus ? p->plus : p->hash;
}

void cy_topic_tree_free(cy_topic_tree *t)
{
    if (!t) return;
    /* Post-order without a stack: free a node once its children are gone,
     * reading its next sibling from the parent's (still intact) table first. */
    node *n = &t->root, *c;
    while ((c = first_child(n)))
        n = c;
    while (n != &t->root) {
        node *s = next_sibling(n), *p = parent_of(n);
        node_free(n);
        if (s) {
            n = s;
            while ((c = first_child(n)))
                n = c;
        } else {
            n = p;
        }
    }
    /* The root holds no subscriptions: every filter has at least one level. */
    cy_trie_fini(&t->root.t);
    cy_free(t);
}

int cy_topic_tree_add(cy_topic_tree *t, const char *filter, size_t len, void *owner, uint8_t opts,
                      uint32_t sub_id, bool *existed)
{
    if (!t || !cy_topic_valid_filter(filter, len)) return CY_EINVAL;
    const char *gname = NULL, *f = filter;
    size_t glen = 0, flen = len;
    bool shared = cy_topic_split_shared(filter, len, &gname, &glen, &f, &flen);
    node *last = NULL;
    node *n = walk(t, f, flen, true, &last);
    if (!n) {
        prune(t, last);
        return CY_ENOMEM;
    }
    sub **arr = &n->subs;
    uint32_t *cnt = &n->nsubs, *cap = &n->capsubs;
    group *g = NULL;
    bool new_group = false;
    if (shared) {
        g = group_find(n, gname, glen);
        if (!g) {
            g = cy_calloc(1, sizeof *g + len);
            if (!g) goto fail;
            memcpy(g->name, filter, len);
            g->namelen = (uint32_t)glen;
            g->fulllen = (uint32_t)len;
            g->next = n->groups;
            n->groups = g;
            new_group = true;
        }
        arr = &g->members;
        cnt = &g->n;
        cap = &g->cap;
    }
    sub *s = sub_find(*arr, *cnt, owner);
    if (s) {
        s->opts = opts;
        s->sub_id = sub_id;
        if (existed) *existed = true;
        return 0;
    }
    if (reserve(arr, *cnt, cap) != 0) goto fail;
    (*arr)[(*cnt)++] = (sub){.owner = owner, .sub_id = sub_id, .opts = opts};
    t->count++;
    if (existed) *existed = false;
    return 0;

fail:
    if (new_group) {
        n->groups = g->next;
        cy_free(g->members);
        cy_free(g);
    }
    prune(t, n);
    return CY_ENOMEM;
}

int cy_topic_tree_opts(const cy_topic_tree *t, const char *filter, size_t len, void *owner)
{
    if (!t || !cy_topic_valid_filter(filter, len)) return CY_EINVAL;
    const char *gname = NULL, *f = filter;
    size_t glen = 0, flen = len;
    bool shared = cy_topic_split_shared(filter, len, &gname, &glen, &f, &flen);
    node *last;
    node *n = walk((cy_topic_tree *)t, f, flen, false, &last);
    if (!n) return CY_ENOENT;
    group *g = shared ? group_find(n, gname, glen) : NULL;
    if (shared && !g) return CY_ENOENT;
    sub *s = shared ? sub_find(g->members, g->n, owner) : sub_find(n->subs, n->nsubs, owner);
    return s ? s->opts : CY_ENOENT;
}

int cy_topic_tree_remove(cy_topic_tree *t, const char *filter, size_t len, void *owner)
{
    if (!t || !cy_topic_valid_filter(filter, len)) return CY_EINVAL;
    const char *gname = NULL, *f = filter;
    size_t glen = 0, flen = len;
    bool shared = cy_topic_split_shared(filter, len, &gname, &glen, &f, &flen);
    node *last;
    node *n = walk(t, f, flen, false, &last);
    if (!n) return CY_ENOENT;
    if (shared) {
        group *g = group_find(n, gname, glen);
        sub *s = g ? sub_find(g->members, g->n, owner) : NULL;
        if (!s) return CY_ENOENT;
        /* Shift, not swap: the join order is the round robin order. */
        uint32_t r = (uint32_t)(s - g->members);
        memmove(s, s + 1, (size_t)(g->n - r - 1) * sizeof *s);
        g->n--;
        if (r < g->cursor) g->cursor--;
        if (g->cursor >= g->n) g->cursor = 0;
        if (g->n == 0) {
            group **pg = &n->groups;
            while (*pg != g)
                pg = &(*pg)->next;
            *pg = g->next;
            cy_free(g->members);
            cy_free(g);
        } else {
            shrink(&g->members, g->n, &g->cap);
        }
    } else {
        sub *s = sub_find(n->subs, n->nsubs, owner);
        if (!s) return CY_ENOENT;
        *s = n->subs[--n->nsubs];
        shrink(&n->subs, n->nsubs, &n->capsubs);
    }
    t->count--;
    prune(t, n);
    return 0;
}

/* The member of g to get this message: from the cursor on, the first that
 * grades 2, else the first that grades 1; NULL if every member grades 0. */
static const sub *pick(group *g, const cy_topic_matcher *m)
{
    uint32_t idx = g->cursor;
    if (m->grade) {
        uint32_t i = g->cursor, fallback = UINT32_MAX;
        idx = UINT32_MAX;
        for (uint32_t k = 0; k < g->n; k++) {
            int grade = m->grade(m->ctx, g->members[i].owner);
            if (grade >= 2) {
                idx = i;
                break;
            }
            if (grade == 1 && fallback == UINT32_MAX) fallback = i;
            if (++i == g->n) i = 0;
        }
        if (idx == UINT32_MAX) idx = fallback;
        if (idx == UINT32_MAX) return NULL;
    }
    g->cursor = idx + 1 == g->n ? 0 : idx + 1;
    return &g->members[idx];
}

static void report(node *n, const cy_topic_matcher *m)
{
    for (uint32_t i = 0; i < n->nsubs; i++)
        m->on_sub(m->ctx, n->subs[i].owner, n->subs[i].opts, n->subs[i].sub_id);
    for (group *g = n->groups; g; g = g->next) {
        if (m->want_group && !m->want_group(m->ctx, g->name, g->fulllen)) continue;
        const sub *s = pick(g, m);
        if (s) m->on_shared(m->ctx, s->owner, s->opts, s->sub_id, g->name, g->fulllen);
    }
}

/* The old interface, on top of the matcher. */
typedef struct legacy {
    cy_topic_match_fn fn;
    cy_topic_accept_fn accept;
    void *ctx;
} legacy;

static void legacy_sub(void *ctx, void *owner, uint8_t opts, uint32_t sub_id)
{
    legacy *l = ctx;
    l->fn(l->ctx, owner, opts, sub_id, false);
}

static void legacy_shared(void *ctx, void *owner, uint8_t opts, uint32_t sub_id,
                          const char *filter, size_t len)
{
    legacy *l = ctx;
    (void)filter;
    (void)len;
    l->fn(l->ctx, owner, opts, sub_id, true);
}

static int legacy_grade(void *ctx, void *owner)
{
    legacy *l = ctx;
    return l->accept(l->ctx, owner) ? 2 : 1;
}

void cy_topic_tree_match(cy_topic_tree *t, const char *name, size_t len, cy_topic_match_fn fn,
                         cy_topic_accept_fn accept, void *ctx)
{
    if (!fn) return;
    legacy l = {fn, accept, ctx};
    cy_topic_matcher m = {legacy_sub, legacy_shared, accept ? legacy_grade : NULL, NULL, &l};
    cy_topic_tree_match_with(t, name, len, &m);
}

void cy_topic_tree_match_with(cy_topic_tree *t, const char *name, size_t len,
                              const cy_topic_matcher *m)
{
    if (!t || !m || !name || len == 0) return;
    node *const root = &t->root;
    const bool dollar = name[0] == '$';
    size_t start[CACHE_LEVELS]; /* start[d]: offset of level d */
    uint32_t hash[CACHE_LEVELS];
    uint64_t hashed = 0; /* bit d: hash[d] is set */
    node *n = root;
    size_t depth = 0; /* n's depth; the level it matches children against */
    size_t off = 0;   /* start of level depth; len + 1 once the topic is used up */
    size_t end = 0;   /* end of level depth */
    start[0] = 0;
    for (;;) {
        const bool wild_ok = !(dollar && n == root);
        node *next = NULL;
        if (n->hash && wild_ok) report(n->hash, m);
        if (off > len) {
            report(n, m);
        } else {
            const char *slash = memchr(name + off, '/', len - off);
            end = slash ? (size_t)(slash - name) : len;
            if (n->t.nchildren) {
                uint32_t h;
                if (depth < CACHE_LEVELS) {
                    if (!(hashed & (1ull << depth))) {
                        hash[depth] = cy_trie_hash(name + off, end - off);
                        hashed |= 1ull << depth;
                    }
                    h = hash[depth];
                } else {
                    h = cy_trie_hash(name + off, end - off);
                }
                next = (node *)cy_trie_find(&n->t, name + off, end - off, h);
            }
            if (!next && wild_ok) next = n->plus;
        }
        /* Back up until a node has a '+' child left to try. Only an exact
         * child has one: after the '+' child, the level is done. */
        while (!next) {
            if (n == root) return;
            node *p = parent_of(n);
            depth--;
            end = off - 1;
            if (depth < CACHE_LEVELS) {
                off = start[depth];
            } else {
                off = end;
                while (off > 0 && name[off - 1] != '/')
                    off--;
            }
            if (n != p->plus && !(dollar && p == root)) next = p->plus;
            n = p;
        }
        n = next;
        depth++;
        off = end + 1;
        if (depth < CACHE_LEVELS) start[depth] = off;
    }
}

size_t cy_topic_tree_count(const cy_topic_tree *t)
{
    return t ? t->count : 0;
}
