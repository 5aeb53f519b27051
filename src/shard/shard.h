/* shard: one shard of a node: its layers, composed, and its loop.
 *
 * A cy_shard owns one of each layer over one store: the router (router.h),
 * the cluster (cluster.h), the device layer (device.h), the MQTT gateway
 * (gateway.h), the CoAP transport (coap.h) and, when http_listen is set, the HTTP API (api.h). It holds
 * no global state, so N shards run as N processes with the same code.
 *
 * One loop pass: libuv reads sockets and the layers handle what came,
 * changing state, writing to the store and appending replies to output
 * buffers. A check handle then ends the pass: it runs the pass hooks
 * registered at CY_PASS_START and CY_PASS_BEFORE_COMMIT, commits the store,
 * and only then runs the CY_PASS_AFTER_COMMIT hooks (which write
 * connections' output and durable frames), repeating while a hook or the
 * store has more; then CY_PASS_END. So an acknowledgement never leaves
 * before what it acknowledges is on disk, and the loop calls no layer by
 * name: the composition (cy_shard_new) registers each layer's hooks.
 * Early pass ends: after a client socket's read callback (the first few of
 * a pass), the hooks up to the writes run at once when the store has
 * nothing to commit, so a reply or delivery that needs no disk leaves
 * without waiting for the rest of the poll's sockets; with writes pending,
 * the check handle commits them with the rest of the pass (shard.c).
 *
 * Ownership: cy_shard_new borrows loop, config, store and registry; they
 * must outlive the shard. Thread: the loop's thread only.
 * Errors: CY_ENOMEM, CY_EINVAL, -errno from libuv, the store's and bus's.
 */
#ifndef CY_SHARD_H
#define CY_SHARD_H

#include "core/cy_config.h"
#include "core/cy_limit.h"
#include "health/metrics.h"
#include "health/scoreboard.h"
#include "store/store.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct cy_shard cy_shard;

/* Where this shard sits among the shards of its node. */
typedef struct cy_shard_place {
    unsigned index;      /* 0..count-1 */
    unsigned count;      /* 1 = no bus, no handover */
    uint64_t generation; /* spawn number, for the bus HELLO */
    cy_scoreboard *sb;   /* borrowed; NULL = no scoreboard */
    cy_limit *limit;     /* borrowed: the node's limits against abuse; NULL = none */
} cy_shard_place;

/* The points of the end of a loop pass where hooks run, in this order:
 * START, BEFORE_COMMIT, then rounds of (commit, AFTER_COMMIT,
 * BEFORE_COMMIT) while a hook's `more` says so or the store has pending
 * writes, then END. */
typedef enum {
    CY_PASS_START,
    CY_PASS_BEFORE_COMMIT,
    CY_PASS_AFTER_COMMIT,
    CY_PASS_END,
    CY_PASS_NPOINTS
} cy_pass_point;

/* Run fn(ctx) at point `at` of every pass end, after the hooks registered
 * there before. more (may be NULL): does ctx have work another round must
 * do (output produced by a later hook)? Errors: CY_ENOMEM. */
int cy_shard_on_pass(cy_shard *sh, cy_pass_point at, void (*fn)(void *ctx),
                     bool (*more)(const void *ctx), void *ctx);
/* Run fn(ctx, now) every sweep (CY_SWEEP_MS; now: the loop's mono ms). */
int cy_shard_on_sweep(cy_shard *sh, void (*fn)(void *ctx, int64_t now), void *ctx);

/* Build the layers (the device layer reads the ACL file, acl_file: one
 * that does not parse is logged, and the shard refuses every client access
 * until a reload reads a good one) and load the persistent state from
 * store. place is copied. */
int cy_shard_new(uv_loop_t *loop, const cy_config *cfg, cy_store *store, cy_registry *registry,
                 const cy_shard_place *place, cy_shard **out);
/* The sockets a shard serves on (inherited from the supervisor; -1 = off). */
typedef struct cy_shard_fds {
    int mqtt;  /* the MQTT listening socket */
    int http;  /* the HTTP API's */
    int coap;  /* the plain CoAP UDP socket, shared by every shard */
    int coaps; /* this shard's CoAP over DTLS UDP socket (one of a SO_REUSEPORT group) */
    int mqtts; /* the MQTT over TLS listening socket, shared like mqtt's */
} cy_shard_fds;
/* Start serving on fds (duplicated, not owned); join the bus when there
 * are several shards; start the loop's handles. Clients are taken once
 * every shard is ready (or after a wait). */
int cy_shard_start(cy_shard *sh, const cy_shard_fds *fds);
/* Write heartbeat, progress, owed work (`queued`, as last summed by the
 * owed-work timer, every cy_watchdog_owed_interval) and counters to this
 * shard's scoreboard slot. Every pass does; call it from a timer too, so
 * an idle shard still beats. */
void cy_shard_beat(cy_shard *sh);
/* Drill: a stalled shard ignores client input and bus frames but keeps
 * beating, so once a client sends it a byte (or a peer a frame) it owes
 * work and makes no progress. Stalled with nothing sent to it, it owes
 * nothing and is left alone (docs/supervision.md). */
void cy_shard_stall(cy_shard *sh);
/* Drill: the shard keeps reading, acknowledging and beating, but routes
 * none of the messages its clients publish (they are lost): the gray
 * failure that progress cannot see and a canary can (docs/operations.md,
 * "The drill"). */
void cy_shard_drop(cy_shard *sh);
/* A reload (SIGHUP, main.c) was applied to the settings: read again the
 * files they name, changed or not: the TLS certificate and key (a new TLS
 * context for new MQTT connections, mqtt.h; the API's HTTPS pair, api.h,
 * cy_api_reload_tls) and the ACL file (acl_file; device.h,
 * cy_devices_load_acl). A file that does not load is logged and what was
 * in use stays; no connection is dropped. */
void cy_shard_reload(cy_shard *sh);
/* Stop accepting, tell MQTT 5 clients the server is shutting down (0x8B),
 * close every connection and handle. When the loop has run dry, call
 * cy_shard_free. */
void cy_shard_stop(cy_shard *sh);
/* Free the shard and every layer. Safe on NULL. */
void cy_shard_free(cy_shard *sh);
/* The body of a shard process (`cyan shard INDEX GENERATION ...`, main.c):
 * maps the scoreboard, opens data_dir/shard-INDEX.db, serves on the
 * inherited listening socket (fd 3) until SIGTERM or the supervisor's death
 * (EOF on fd 4). Returns the process exit status. */
int cy_shard_run(const cy_config *cfg, unsigned index, uint64_t generation);

#endif
