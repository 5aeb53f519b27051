/* cy_map: chained hash map, entries carved from blocks; see cy_map.h. */
#include "core/cy_map.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"

#include <string.h>

/* 32 bytes: the low 32 bits of the hash pick the slot (slots stay under
 * 2^32) and filter the comparisons. */
struct cy_map_entry {
    cy_map_entry *next;
    const void *key;
    void *value;
    uint32_t hash;
    uint32_t len;
};

/* A block of entries; the map's blocks are a list. */
typedef struct entry_block {
    struct entry_block *next;
    cy_map_entry e[];
} entry_block;

#define BLOCK_MIN 8
#define BLOCK_MAX 1024

/* An entry from the free list, or from a new block; NULL: no memory. */
static cy_map_entry *entry_take(cy_map *m)
{
    if (!m->free_entries) {
        uint32_t n = m->next_block ? m->next_block : BLOCK_MIN;
        entry_block *b = cy_malloc(sizeof(*b) + n * sizeof(cy_map_entry));
        if (!b) return NULL;
        b->next = m->blocks;
        m->blocks = b;
        for (uint32_t i = 0; i < n; i++) {
            b->e[i].next = m->free_entries;
            m->free_entries = &b->e[i];
        }
        m->next_block = n < BLOCK_MAX ? n * 2 : BLOCK_MAX;
    }
    cy_map_entry *e = m->free_entries;
    m->free_entries = e->next;
    return e;
}

static void entry_give(cy_map *m, cy_map_entry *e)
{
    e->key = NULL;
    e->value = NULL;
    e->next = m->free_entries;
    m->free_entries = e;
}

uint64_t cy_hash(const void *key, size_t len)
{
    const uint8_t *p = key;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

void cy_map_init(cy_map *m)
{
    memset(m, 0, sizeof(*m));
}

void cy_map_fini(cy_map *m)
{
    entry_block *b = m->blocks;
    while (b) {
        entry_block *n = b->next;
        cy_free(b);
        b = n;
    }
    cy_free(m->slots);
    memset(m, 0, sizeof(*m));
}

static cy_map_entry **find(const cy_map *m, const void *key, size_t len, uint32_t h)
{
    if (!m->nslots) return NULL;
    cy_map_entry **pp = &m->slots[h & (m->nslots - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && (*pp)->len == len && memcmp((*pp)->key, key, len) == 0) return pp;
    return pp;
}

void *cy_map_get(const cy_map *m, const void *key, size_t len)
{
    cy_map_entry **pp = find(m, key, len, (uint32_t)cy_hash(key, len));
    return pp && *pp ? (*pp)->value : NULL;
}

static int grow(cy_map *m)
{
    size_t n = m->nslots ? m->nslots * 2 : 16;
    cy_map_entry **slots = cy_calloc(n, sizeof(*slots));
    if (!slots) return CY_ENOMEM;
    for (size_t i = 0; i < m->nslots; i++) {
        cy_map_entry *e = m->slots[i];
        while (e) {
            cy_map_entry *next = e->next;
            e->next = slots[e->hash & (n - 1)];
            slots[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    cy_free(m->slots);
    m->slots = slots;
    m->nslots = n;
    return 0;
}

int cy_map_put(cy_map *m, const void *key, size_t len, void *value)
{
    if (len > UINT32_MAX) return CY_EINVAL;
    uint32_t h = (uint32_t)cy_hash(key, len);
    cy_map_entry **pp = find(m, key, len, h);
    if (pp && *pp) return CY_EEXIST;
    cy_map_entry *e = entry_take(m);
    if (!e) return CY_ENOMEM;
    if (m->count >= m->nslots && (m->nslots >= (size_t)1 << 31 || grow(m))) {
        /* A failed grow only costs speed, unless there are no slots at all. */
        if (!m->nslots) {
            entry_give(m, e);
            return CY_ENOMEM;
        }
    }
    e->hash = h;
    e->key = key;
    e->len = (uint32_t)len;
    e->value = value;
    e->next = m->slots[h & (m->nslots - 1)];
    m->slots[h & (m->nslots - 1)] = e;
    m->count++;
    return 0;
}

void *cy_map_del(cy_map *m, const void *key, size_t len)
{
    cy_map_entry **pp = find(m, key, len, (uint32_t)cy_hash(key, len));
    if (!pp || !*pp) return NULL;
    cy_map_entry *e = *pp;
    void *v = e->value;
    *pp = e->next;
    entry_give(m, e);
    m->count--;
    return v;
}

void cy_map_each(const cy_map *m, void (*fn)(void *ctx, void *value), void *ctx)
{
    for (size_t i = 0; i < m->nslots; i++)
        for (cy_map_entry *e = m->slots[i]; e; e = e->next) fn(ctx, e->value);
}
