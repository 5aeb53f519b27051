/* topic_trie: chained hash tables of trie children (see topic_trie.h).
 *
 * The table grows at a load factor of 1 (4 in the inline bucket) and shrinks
 * below 1/4 (back to inline at 2), so a level that held 100k ids and emptied
 * gives its memory back, and a count hovering at a threshold does not make
 * every add and remove reallocate.
 * Resizing re-links the existing child nodes into a new bucket array; the
 * nodes never move, so pointers to them stay valid.
 */
#include "router/topic_trie.h"

#include <string.h>

#include "core/cy_alloc.h"

/* Below this many buckets a table is not shrunk except back to inline. */
#define MIN_SLOTS 8u

static uint64_t rotl(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

/* Eight bytes per step (multiply and rotate), then a murmur3 finaliser so the
 * low bits used as the bucket index depend on every input byte. Not keyed:
 * a client allowed to create very many subscriptions (or retained topics)
 * with chosen level strings could aim them at one bucket and make that
 * level's lookups linear. If that threat matters, key this hash per process
 * (SipHash); nothing else here depends on the function. */
uint32_t cy_trie_hash(const char *s, size_t len)
{
    const uint64_t k = 0x9fb21c651e98df25ULL;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ ((uint64_t)len * k);
    uint64_t w;
    while (len >= 8) {
        memcpy(&w, s, 8);
        h = rotl((h ^ w) * k, 29);
        s += 8;
        len -= 8;
    }
    if (len) {
        w = 0;
        memcpy(&w, s, len);
        h = rotl((h ^ w) * k, 29);
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return (uint32_t)h;
}

void cy_trie_init(cy_trie_node *n, const char *key, uint32_t keylen, uint32_t hash)
{
    memset(n, 0, sizeof *n);
    n->slots = &n->one;
    n->nslots = 1;
    n->key = key;
    n->keylen = keylen;
    n->hash = hash;
}

void cy_trie_fini(cy_trie_node *n)
{
    if (n->slots != &n->one) cy_free(n->slots);
    n->slots = &n->one;
    n->one = NULL;
    n->nslots = 1;
    n->nchildren = 0;
}

cy_trie_node *cy_trie_find(const cy_trie_node *p, const char *key, size_t len, uint32_t hash)
{
    cy_trie_node *c = p->slots[hash & (p->nslots - 1)];
    for (; c; c = c->next)
        if (c->hash == hash && c->keylen == len && memcmp(c->key, key, len) == 0) return c;
    return NULL;
}

/* Move every child into a table of n buckets (n a power of two). On
 * allocation failure nothing changes: the old table is still correct. */
static void resize(cy_trie_node *p, uint32_t n)
{
    cy_trie_node **slots;
    if (n == p->nslots) return;
    if (n == 1) {
        slots = &p->one;
        p->one = NULL;
    } else {
        slots = cy_calloc(n, sizeof *slots);
        if (!slots) return;
    }
    /* Collect the chains first: when shrinking to inline, slots aliases
     * p->one, which the loop below fills. */
    cy_trie_node *all = NULL;
    for (uint32_t b = 0; b < p->nslots; b++) {
        cy_trie_node *c = p->slots[b];
        while (c) {
            cy_trie_node *next = c->next;
            c->next = all;
            all = c;
            c = next;
        }
    }
    if (p->slots != &p->one) cy_free(p->slots);
    while (all) {
        cy_trie_node *next = all->next;
        cy_trie_node **head = &slots[all->hash & (n - 1)];
        all->next = *head;
        *head = all;
        all = next;
    }
    p->slots = slots;
    p->nslots = n;
}

void cy_trie_link(cy_trie_node *p, cy_trie_node *c)
{
    c->parent = p;
    cy_trie_node **head = &p->slots[c->hash & (p->nslots - 1)];
    c->next = *head;
    *head = c;
    p->nchildren++;
    if (p->nslots == 1) {
        if (p->nchildren > CY_TRIE_SMALL) resize(p, MIN_SLOTS);
    } else if (p->nchildren > p->nslots && p->nslots <= UINT32_MAX / 2) {
        resize(p, p->nslots * 2);
    }
}

void cy_trie_unlink(cy_trie_node *c)
{
    cy_trie_node *p = c->parent;
    cy_trie_node **pp = &p->slots[c->hash & (p->nslots - 1)];
    while (*pp != c)
        pp = &(*pp)->next;
    *pp = c->next;
    c->next = NULL;
    c->parent = NULL;
    p->nchildren--;
    if (p->nslots == 1) return;
    if (p->nchildren <= CY_TRIE_SMALL / 2 && p->nslots == MIN_SLOTS)
        resize(p, 1);
    else if (p->nslots > MIN_SLOTS && p->nchildren < p->nslots / 4)
        resize(p, p->nslots / 2);
}

static cy_trie_node *scan(const cy_trie_node *p, uint32_t from)
{
    for (uint32_t b = from; b < p->nslots; b++)
        if (p->slots[b]) return p->slots[b];
    return NULL;
}

cy_trie_node *cy_trie_first(const cy_trie_node *p)
{
    return p->nchildren ? scan(p, 0) : NULL;
}

cy_trie_node *cy_trie_next(const cy_trie_node *c)
{
    if (c->next) return c->next;
    const cy_trie_node *p = c->parent;
    return scan(p, (c->hash & (p->nslots - 1)) + 1);
}
