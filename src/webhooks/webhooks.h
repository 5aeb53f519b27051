/* webhooks: one shard's event log numbering and its webhook deliveries.
 *
 * The event log. A subscriber of kind "eventlog" (router.h) holds the
 * event filters "devices/+/events/#" and "events/#". Its seal runs where
 * an event enters the node (not for copies from peer shards), before the
 * event is routed: it appends the event to the shard's store
 * (cy_store_event_append), in the batch that is committed before the
 * publisher's acknowledgement, and stamps the message with its number
 * (m->event_seq), which travels with it to the other shards. An internal
 * device's event (a canary's) is neither logged nor numbered.
 *
 * Deliveries. Every shard delivers the events of its own log to every
 * webhook (the definitions are node-wide, in the registry: store/hooks.h,
 * reloaded when their generation moves). For each webhook a shard keeps:
 *   cursor   every event <= cursor is settled: not matched, delivered,
 *            dead-lettered, or parked in the retry table;
 *   window   the matched events after the cursor, in log order (read from
 *            the log by `scan`, at most a few times the concurrency), each
 *            waiting, in flight, or done;
 *   retries  events that failed and wait for their next attempt, each a row
 *            of hook_retry with its own copy of the event (so the log can be
 *            trimmed past it) and the trail of its attempts.
 * The cursor moves over the window's settled head and is written, with the
 * settled counters, in the same batch as the rows that settled them
 * (retry, dead-letter), so matched = delivered + dead + retry rows holds on
 * disk at every commit. A crash forgets only the window: after a restart
 * the window is read again from the cursor, and an event delivered just
 * before the crash is sent again, with the same webhook-id (at least once).
 *
 * A delivery is an HTTP request (http/client.h, on the shard's loop),
 * signed (sign.h), rendered from the webhook's templates (render.h),
 * judged by policy.h: 2xx delivered; a retryable failure parks the event
 * in the retry table with its next time (backoff, Retry-After) until
 * webhook_max_age after it was logged, then it is dead-lettered; any other
 * answer dead-letters it at once; 410 also disables the webhook. Each
 * webhook has its own concurrency (webhook_concurrency, or 1 and strict log
 * order when `ordered`) and its own circuit, so a slow or dead endpoint
 * holds only its own events: other webhooks and the routing of device
 * messages never wait for it (nothing here blocks the loop).
 *
 * A disabled webhook is paused: it keeps its place in the log (which it
 * holds from trimming) and sends nothing; enabled again, it delivers what
 * came meanwhile (what is older than webhook_max_age goes to the dead
 * letters). A deleted one is forgotten with its retries and dead letters.
 *
 * Ownership: cy_webhooks_new borrows everything in the deps; they must
 * outlive it. Thread: the shard's loop thread only.
 * Errors: CY_ENOMEM, CY_EINVAL, CY_ESTORE.
 */
#ifndef CY_WEBHOOKS_H
#define CY_WEBHOOKS_H

#include "core/cy_config.h"
#include "health/metrics.h"
#include "router/router.h"
#include "store/hooks.h"
#include "store/store.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct cy_webhooks cy_webhooks;

typedef struct cy_webhooks_deps {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_store *store;       /* this shard's: the log and the delivery state */
    cy_registry *registry; /* definitions; internal devices */
    cy_router *router;     /* the event log's subscriber; hook responses */
    cy_counters *stats;
    struct cy_space *space; /* the disk-full state (store/space.h); NULL: never full */
    unsigned self, nshards;
} cy_webhooks_deps;

/* Build, subscribe the event log's subscriber, load the delivery state
 * from the store. Deliveries start with cy_webhooks_start. */
int cy_webhooks_new(const cy_webhooks_deps *deps, cy_webhooks **out);
/* Start the HTTP client and the timers (the shard is serving). */
int cy_webhooks_start(cy_webhooks *w);
/* Pass hook (CY_PASS_BEFORE_COMMIT): read what the log gained into the
 * windows, send what is due, write the state that changed into the batch. */
void cy_webhooks_pass(void *w);
/* Events this shard owes its webhooks now (waiting and due, in flight):
 * work for the watchdog. */
uint64_t cy_webhooks_owed(const cy_webhooks *w);
/* Cancel requests in flight (their events stay where they were: sent again
 * after the restart) and close the handles; the loop must run once more
 * before cy_webhooks_free. */
void cy_webhooks_stop(cy_webhooks *w);
/* Safe on NULL. */
void cy_webhooks_free(cy_webhooks *w);

/* ---- reading every shard's state (for the API, on any shard) ----
 * These open the shards' files read-only (cy_store_open_reader): what they
 * show is as of each shard's last commit. */

/* A webhook's figures summed over the shards, with each shard's under
 * "shards" (caller frees with json_decref; NULL when out of memory). */
json_t *cy_webhooks_stats(const cy_config *cfg, unsigned nshards, const char *hook);
/* Up to limit of a webhook's dead letters, shard by shard, oldest first. */
json_t *cy_webhooks_dead_letters(const cy_config *cfg, unsigned nshards, const char *hook,
                                 unsigned limit);
/* Where the event event_id went: its shard, its fields, and for each
 * webhook of the registry its state there (delivered, pending, retrying,
 * dead_lettered, not_matched, not_seen) with its attempts. *out: caller
 * frees with json_decref. Errors: CY_EINVAL (not an event id), CY_ENOENT
 * (no such event in that shard's log nor in any webhook's rows). */
int cy_webhooks_trace(const cy_config *cfg, unsigned nshards, cy_registry *registry,
                      const char *event_id, json_t **out);

/* An event's name and device from its topic (devices/<id>/events/<name>:
 * device set; events/<name>: device NULL); false if it is no event topic.
 * Pointers into topic. */
bool cy_webhooks_event_view(const char *topic, size_t len, const char **name, size_t *name_len,
                            const char **device, size_t *device_len);

/* Whether a webhook may publish its receiver's answer (or its failure) on
 * topic[0..len), rendered from its response_topic or error_topic for an
 * event of device (NUL-terminated; NULL: a shared event). Not a '$' topic,
 * nor an event name of cyan's own (cyan/...); under devices/ only the
 * event's own device's space, and not its call/, get/, reply/ or describe
 * topics: those are the API's requests and the device's answers, which a
 * webhook (the webhooks:manage scope, a receiver's text) may not make.
 * false with why (a static text). */
bool cy_webhooks_topic_ok(const char *topic, size_t len, const char *device, const char **why);

/* The path of shard i's store file in the data folder, into buf. */
void cy_webhooks_shard_path(const cy_config *cfg, unsigned shard, char *buf, size_t len);

/* The id "<shard>-<seq>" of an event: 0 and the parts, or CY_EINVAL. */
int cy_webhooks_event_id_parse(const char *id, unsigned *shard, uint64_t *seq);

#endif
