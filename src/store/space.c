/* space: the disk-full state of the data folder (space.h). */
#include "store/space.h"

#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

void cy_space_init(cy_space *sp, cy_store *store, const char *dir, const uint64_t *refusals)
{
    *sp = (cy_space){.store = store, .dir = dir, .refusals = refusals};
}

/* Enter the disk-full state (one warning; the sweep's probe leaves it). */
static void enter(cy_space *sp, uint64_t free_bytes, const char *when)
{
    if (sp->full) return;
    sp->full = true;
    sp->refused_at = *sp->refusals;
    cy_warn(NULL,
            "disk full%s: %llu KiB free in %s (under %u MiB): refusing new durable work "
            "(QoS 1/2 and retained publishes, new persistent sessions and their "
            "subscriptions) until %u MiB are free; QoS 0 and connected clients go on",
            when, (unsigned long long)(free_bytes >> 10), sp->dir, CY_DISK_LOW >> 20,
            CY_DISK_OK >> 20);
}

void cy_space_probe(cy_space *sp, const char *when)
{
    uint64_t free_bytes = 0;
    int rc = cy_store_space(sp->store, &free_bytes);
    sp->probe_at = cy_mono_ms();
    sp->bytes_at = cy_store_bytes(sp->store);
    if (rc) {
        /* Cannot tell (an in-memory store, a statvfs failure): a commit that
         * fails still keeps acknowledgements back; refusing on a guess
         * would not. */
        if (!sp->unknown)
            cy_warn(NULL, "cannot ask the data folder's file system for free space (%s): "
                          "durable work is not refused for lack of space",
                    cy_strerror(rc));
        sp->unknown = true;
        return;
    }
    sp->unknown = false;
    sp->free = free_bytes;
    if (!sp->full && free_bytes < CY_DISK_LOW) {
        enter(sp, free_bytes, when);
    } else if (sp->full && free_bytes >= CY_DISK_OK) {
        sp->full = false;
        cy_warn(NULL, "disk space back: %llu MiB free in %s: taking durable work again "
                      "(%llu refused meanwhile)",
                (unsigned long long)(free_bytes >> 20), sp->dir,
                (unsigned long long)(*sp->refusals - sp->refused_at));
    }
}

bool cy_space_full(cy_space *sp)
{
    if (sp->full) return true;
    if (sp->unknown) return false;
    /* The file system is asked at most every CY_DISK_PROBE_MS (other
     * shards write to it too); in between, our own writes since the last
     * answer count twice (the WAL, then the file at the checkpoint). */
    if (cy_mono_ms() - sp->probe_at >= CY_DISK_PROBE_MS) cy_space_probe(sp, "");
    if (sp->full) return true;
    uint64_t spent = 2 * (cy_store_bytes(sp->store) - sp->bytes_at);
    uint64_t left = sp->free > spent ? sp->free - spent : 0;
    /* Every refusal is made in the state (logged, left by the sweep), so a
     * shard whose estimate runs low between probes does not take and
     * refuse by turns. */
    if (left < CY_DISK_LOW) enter(sp, left, " (estimated)");
    return sp->full;
}
