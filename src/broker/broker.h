/* broker: the MQTT server of one event loop.
 *
 * A cy_broker owns everything one loop needs to be an MQTT broker: its
 * listener, connections, sessions, subscription tree, retained messages,
 * counters and its store. It holds no global state, so N brokers can run as
 * N independent processes (shards) with the same code.
 *
 * One loop pass: libuv reads sockets and runs the packet handlers, which
 * change state, write to the store and append replies to per-connection
 * output buffers. A check handle then runs once per pass: it commits the
 * store, and only then flushes every connection that has output (one write
 * per socket per pass). So an acknowledgement never leaves before what it
 * acknowledges is on disk.
 *
 * Ownership: cy_broker_new borrows loop, config, store and registry; they
 * must outlive the broker. Thread: the loop's thread only.
 * Errors: CY_ENOMEM, CY_EINVAL (bad listen address), -errno from libuv.
 */
#ifndef CY_BROKER_H
#define CY_BROKER_H

#include "core/cy_config.h"
#include "health/metrics.h"
#include "store/store.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* The counters (cy_counters, b->stats) come from the metrics registry,
 * health/metrics.h; each is published as $SYS/cyan/<name>. */

typedef struct cy_broker cy_broker;

/* Where this broker sits among the shards of its node. */
typedef struct cy_broker_shard {
    unsigned index;      /* 0..count-1 */
    unsigned count;      /* 1 = no bus, no handover */
    uint64_t generation; /* spawn number, for the bus HELLO */
    struct cy_scoreboard *sb; /* borrowed; NULL = no scoreboard */
} cy_broker_shard;

/* Build the broker and load its persistent state from store. shard is copied. */
int cy_broker_new(uv_loop_t *loop, const cy_config *cfg, cy_store *store, cy_registry *registry,
                  const cy_broker_shard *shard, cy_broker **out);
/* Start serving: accept MQTT connections on the listening socket fd
 * (inherited from the supervisor, not owned: it is duplicated), join the bus
 * (data_dir/run) when there are several shards, start the loop hooks. */
int cy_broker_start(cy_broker *b, int listen_fd);
/* Serve the HTTP API (docs/api.md) on the inherited listening socket
 * http_fd (duplicated; the caller closes its own). After cy_broker_start;
 * requests are taken once the broker accepts MQTT clients too. */
int cy_api_start(cy_broker *b, int http_fd);
/* Write heartbeat, progress and counters to this shard's scoreboard slot.
 * The broker calls it every loop pass; call it from a timer too, so an
 * idle shard still beats. */
void cy_broker_beat(cy_broker *b);
/* Drill: a stalled broker ignores client input and bus frames but keeps
 * beating, so it has work queued and makes no progress. */
void cy_broker_stall(cy_broker *b);
/* Stop accepting, tell MQTT 5 clients the server is shutting down (0x8B),
 * close every connection and handle. When the loop has run dry, call
 * cy_broker_free. */
void cy_broker_stop(cy_broker *b);
/* Free the broker and every session and message it holds. Safe on NULL. */
void cy_broker_free(cy_broker *b);
/* The body of a shard process (`cyan shard INDEX GENERATION ...`): maps the
 * scoreboard, opens data_dir/shard-INDEX.db, serves on the inherited
 * listening socket (fd 3) until SIGTERM or the supervisor's death (EOF on
 * fd 4). Returns the process exit status. */
int cy_shard_run(const cy_config *cfg, unsigned index, uint64_t generation);

#endif
