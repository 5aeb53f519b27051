/* cy_map: a hash map from byte-string keys to pointers (chained, FNV-1a,
 * doubling at load factor 1).
 *
 * The sessions of a node's devices are one entry each, so an entry is kept
 * small: 32 bytes, carved from blocks the map allocates (8 entries, then
 * doubling up to 1024 a block) rather than a malloc chunk of 48 each; a
 * deleted entry goes on the map's free list for the next put, and the
 * blocks are freed by cy_map_fini. Keys are at most 4 GiB - 1 bytes.
 *
 * Ownership: keys are borrowed: the caller keeps each key's bytes alive and
 * unchanged while it is in the map (typically the key lives in the value,
 * e.g. a session's client id). Values are opaque.
 * Errors: CY_ENOMEM, CY_EEXIST, CY_ENOENT. Thread: the owner's.
 */
#ifndef CY_MAP_H
#define CY_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct cy_map_entry cy_map_entry;

typedef struct cy_map {
    cy_map_entry **slots;
    size_t nslots; /* power of two, or 0 */
    size_t count;
    cy_map_entry *free_entries; /* deleted entries, for the next puts */
    void *blocks;               /* the entries' blocks (a list), freed by cy_map_fini */
    uint32_t next_block;        /* entries of the next block */
} cy_map;

void cy_map_init(cy_map *m);
/* Frees the map's memory; keys and values are not touched. */
void cy_map_fini(cy_map *m);
void *cy_map_get(const cy_map *m, const void *key, size_t len);
/* CY_EEXIST if the key is present (nothing changed); CY_EINVAL if len is
 * 4 GiB or more. */
int cy_map_put(cy_map *m, const void *key, size_t len, void *value);
/* Returns the removed value, or NULL if absent. */
void *cy_map_del(cy_map *m, const void *key, size_t len);
/* Visit every value; fn must not change the map. */
void cy_map_each(const cy_map *m, void (*fn)(void *ctx, void *value), void *ctx);
uint64_t cy_hash(const void *key, size_t len);

#endif
