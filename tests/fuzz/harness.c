/* harness: see harness.h. */
#include "harness.h"

#include "core/cy_log.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

void fz_setup(const char *name, char *dir, size_t n, uv_loop_t *loop, cy_config *cfg,
              unsigned nshards)
{
    const char *lvl = getenv("CYAN_FUZZ_LOG");
    cy_log_level l;
    if (lvl && cy_log_parse_level(lvl, &l) == 0)
        cy_log_set_level(l);
    else
        cy_log_set_level((cy_log_level)(CY_LOG_ERROR + 1)); /* off */
    /* SQLite's files in memory when /dev/shm is there. */
    snprintf(dir, n, "%s/cyan-fuzz-%s-XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp",
             name);
    CHECK(mkdtemp(dir));
    CHECK(uv_loop_init(loop) == 0);
    cy_config_defaults(cfg);
    snprintf(cfg->data_dir, sizeof(cfg->data_dir), "%s", dir);
    cfg->shards = nshards;
}

void fz_remove_db(const char *base)
{
    static const char *const ext[] = {"", "-wal", "-shm"};
    char p[256];
    for (size_t i = 0; i < sizeof(ext) / sizeof(ext[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", base, ext[i]);
        unlink(p);
    }
}

void fz_remove_dir(const char *dir, unsigned nshards)
{
    char p[256];
    for (unsigned i = 0; i < nshards; i++) {
        snprintf(p, sizeof(p), "%s/shard-%u.db", dir, i);
        fz_remove_db(p);
    }
    snprintf(p, sizeof(p), "%s/registry.db", dir);
    fz_remove_db(p);
    snprintf(p, sizeof(p), "%s/registry.key", dir);
    unlink(p);
    rmdir(dir);
}

void fz_core_open(fz_core *c, uv_loop_t *loop, const cy_config *cfg, cy_store *store,
                  const char *dir, unsigned self, unsigned nshards, const cy_cluster_hooks *hooks)
{
    cy_space_init(&c->space, store, dir, &c->stats.store_full_refusals);
    CHECK(cy_router_new(cfg, store, &c->stats, self, &c->router) == 0);
    cy_cluster_options co = {.self = self, .nshards = nshards, .generation = 1, .sb = NULL};
    CHECK(cy_cluster_new(loop, cfg, store, c->router, &c->stats, &co, &c->cl) == 0);
    if (hooks) cy_cluster_set_hooks(c->cl, hooks);
    CHECK(cy_devices_new(loop, cfg, store, c->router, c->cl, &c->stats, &c->hists, self, nshards, 1,
                         &c->devices) == 0);
}

void fz_core_close(fz_core *c, cy_store *store)
{
    cy_devices_free(c->devices);
    cy_store_commit(store);
    cy_cluster_free(c->cl);
    cy_router_free(c->router);
}
