/* space: is the data folder's disk (nearly) full?
 *
 * Below CY_DISK_LOW bytes free on the data folder's file system a shard
 * refuses new durable work (QoS 1/2 and retained publishes, new persistent
 * sessions and their subscriptions) before it is acknowledged; it takes it
 * again from CY_DISK_OK (the gap keeps it from flapping). The low mark is
 * the room left for what must still be written: deletes and updates of
 * messages being delivered, sessions going offline, frames from other
 * shards, SQLite's WAL and checkpoints. Between two probes of the file
 * system (at most one per CY_DISK_PROBE_MS while durable work comes, and
 * one per sweep) the store's own writes count twice (WAL, then the file).
 * Entering and leaving the state are logged once each.
 *
 * Ownership: cy_space borrows the store, the folder's name and the refusal
 * counter (read to log how many were refused meanwhile).
 * Errors: none; a file system that cannot be asked never refuses.
 * Thread: the store's.
 */
#ifndef CY_SPACE_H
#define CY_SPACE_H

#include "store/store.h"

#include <stdbool.h>
#include <stdint.h>

#define CY_DISK_LOW (8u << 20)
#define CY_DISK_OK (16u << 20)
#define CY_DISK_PROBE_MS 10

typedef struct cy_space {
    cy_store *store;
    const char *dir;           /* for the log lines */
    const uint64_t *refusals;  /* the caller's count of refusals (store_full_refusals) */
    bool full;                 /* refusing new durable work until space returns */
    bool unknown;              /* the file system could not be asked: do not refuse */
    uint64_t free;             /* bytes free at the last probe */
    uint64_t bytes_at;         /* cy_store_bytes at the last probe */
    int64_t probe_at;          /* mono ms of the last probe */
    uint64_t refused_at;       /* *refusals when the state began */
} cy_space;

void cy_space_init(cy_space *sp, cy_store *store, const char *dir, const uint64_t *refusals);
/* Ask the file system now and enter or leave the state (the sweep's way
 * out of it). when: a note for the log line (" at start", ""). */
void cy_space_probe(cy_space *sp, const char *when);
/* Must new durable work be refused now? May ask the file system (at most
 * every CY_DISK_PROBE_MS). The caller counts the refusal and answers it. */
bool cy_space_full(cy_space *sp);

#endif
