/* topic_trie: the child table shared by the subscription tree and the
 * retained tree (private to src/router, not an interface of the module).
 *
 * A trie node is keyed by one topic level. Its literal children live in a
 * chained hash table hung off the node, so a level holding 100k device ids
 * is one hash and one short chain walk away, not a scan. Most nodes have one
 * or a few children, so a node starts with a single bucket stored inside
 * itself (no allocation) and gets a real bucket array only when it grows
 * past CY_TRIE_SMALL children. Growing or shrinking the array is only an
 * optimisation: if the allocation fails the table keeps its old size and the
 * caller's insertion still succeeds, so linking never fails.
 *
 * The node header is embedded as the first member of the tree's own node
 * struct; the key bytes are stored by the owner (usually right after its
 * struct, in the same allocation) and only pointed to here.
 *
 * Nothing here recurses: iteration uses parent pointers and bucket order, so
 * a 32k-level-deep trie costs no stack.
 *
 * Thread: a trie belongs to one loop thread.
 */
#ifndef CY_TOPIC_TRIE_H
#define CY_TOPIC_TRIE_H

#include <stddef.h>
#include <stdint.h>

/* Children kept in the node's inline bucket before it gets a bucket array. */
#define CY_TRIE_SMALL 4u

typedef struct cy_trie_node cy_trie_node;
struct cy_trie_node {
    cy_trie_node *parent; /* NULL for the root */
    cy_trie_node *next;   /* next child in the same bucket of parent */
    cy_trie_node **slots; /* buckets, a power of two of them; &one when nslots == 1 */
    cy_trie_node *one;    /* the inline bucket of a small node */
    const char *key;      /* the level's bytes, borrowed from the owner, not NUL-terminated */
    uint32_t keylen;      /* bytes */
    uint32_t hash;        /* cy_trie_hash(key, keylen) */
    uint32_t nslots;      /* buckets */
    uint32_t nchildren;   /* children linked in the table */
};

/* Hash of one level. Same bytes, same hash, for the life of the process. */
uint32_t cy_trie_hash(const char *s, size_t len);
/* Initialise n (caller's storage) with no children. key is borrowed and must
 * outlive n. */
void cy_trie_init(cy_trie_node *n, const char *key, uint32_t keylen, uint32_t hash);
/* Free the bucket array (not the children). */
void cy_trie_fini(cy_trie_node *n);
/* The child of p keyed by key, or NULL. hash is cy_trie_hash(key, len). */
cy_trie_node *cy_trie_find(const cy_trie_node *p, const char *key, size_t len, uint32_t hash);
/* Link c (initialised, not yet linked, no equal key present) under p. Never
 * fails; may grow p's table. */
void cy_trie_link(cy_trie_node *p, cy_trie_node *c);
/* Unlink child c from its parent. May shrink the parent's table. */
void cy_trie_unlink(cy_trie_node *c);
/* Iterate p's children in bucket order: first, then next until NULL. The
 * table must not change during the iteration; cy_trie_next reads only c's
 * parent table and the buckets after c's. */
cy_trie_node *cy_trie_first(const cy_trie_node *p);
cy_trie_node *cy_trie_next(const cy_trie_node *c);

#endif
