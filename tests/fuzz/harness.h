/* harness: what the fuzz targets that build a shard's layers
 * (fuzz_bus, fuzz_api) share: quiet logs, a scratch data folder, a SQLite
 * file's removal, and the core of a shard as src/shard/shard.c builds it
 * (space, router, cluster, device layer) for one shard of a cluster.
 *
 * Ownership: fz_core's pointers belong to it until fz_core_close; the
 * loop, settings and store are the caller's and outlive it.
 * Errors: none returned; a setup failure aborts (a harness bug, not a finding).
 * Threads: the fuzzer's one thread.
 */
#ifndef CYAN_FUZZ_HARNESS_H
#define CYAN_FUZZ_HARNESS_H

#include "cluster/cluster.h"
#include "core/cy_config.h"
#include "device/device.h"
#include "health/metrics.h"
#include "router/router.h"
#include "store/space.h"
#include "store/store.h"

#include <stddef.h>
#include <stdlib.h>
#include <uv.h>

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

/* Logging off unless CYAN_FUZZ_LOG names a level; a fresh folder
 * <shm or tmp>/cyan-fuzz-<name>-XXXXXX in dir[n]; loop initialised; cfg
 * at its defaults with data_dir = dir and the given shard count. */
void fz_setup(const char *name, char *dir, size_t n, uv_loop_t *loop, cy_config *cfg,
              unsigned nshards);

/* Removes base and its -wal and -shm files, if there. */
void fz_remove_db(const char *base);

/* Removes what fz_setup's folder holds (the shards' files, the registry
 * and its key; all closed) and the folder. */
void fz_remove_dir(const char *dir, unsigned nshards);

/* One shard's core. */
typedef struct fz_core {
    cy_counters stats;
    cy_hists hists;
    cy_space space;
    cy_router *router;
    cy_cluster *cl;
    cy_devices *devices;
} fz_core;

/* Built as shard `self` of `nshards` (generation 1, no scoreboard); hooks
 * (NULL for none) set on the cluster before the device layer is made. */
void fz_core_open(fz_core *c, uv_loop_t *loop, const cy_config *cfg, cy_store *store,
                  const char *dir, unsigned self, unsigned nshards, const cy_cluster_hooks *hooks);

/* Frees the device layer, commits, frees the cluster and router; the
 * layers built on top are freed first by the caller. */
void fz_core_close(fz_core *c, cy_store *store);

#endif
