/* metrics: the registry of what a shard counts, and the node's totals.
 *
 * One list, CY_METRICS(X), names every metric once: X(name, kind, unit,
 * help). Everything else is generated from it: the shard's live values
 * (cy_counters, one uint64_t field per metric, so `stats.publish_sent++`),
 * the scoreboard slot's `counters` words (slot order is list order),
 * `$SYS/cyan/<name>`, the totals `cyan status` prints and the Prometheus
 * text exposition for a future /metrics. Adding a metric is one line here;
 * its position is its scoreboard word, so append rather than reorder while
 * a node of the previous binary may share the scoreboard file.
 *
 * Kinds: a counter only goes up while its shard lives (a restarted shard
 * starts again at 0: Prometheus sees a counter reset, which its rate()
 * handles); a gauge is a level that goes up and down (clients connected
 * now). Units are plural nouns of what is counted ("packets"), "" for none.
 *
 * Node totals: a metric's value for the node is the sum over the shards
 * whose slot says RUNNING. The shard that asks passes its own live values,
 * which replace its slot (a slot lags by up to one loop pass) and count
 * whatever its state, so a shard that is still starting sees itself.
 *
 * Latency histograms have a list of their own, CY_HISTS (below): a shard
 * keeps them live in a cy_hists beside its cy_counters and publishes them
 * into its slot's `hists` words on every loop pass.
 *
 * Ownership: everything here is borrowed; nothing allocates but the
 * renderer, which appends to the caller's cy_buf. Errors: CY_ENOMEM (the
 * renderer). Thread: any; scoreboard words are read with relaxed loads.
 */
#ifndef CY_METRICS_H
#define CY_METRICS_H

#include "core/cy_buf.h"
#include "health/scoreboard.h"

#include <stddef.h>
#include <stdint.h>

enum {
    CY_METRIC_COUNTER = 0, /* goes up only (per shard process) */
    CY_METRIC_GAUGE = 1,   /* a level: goes up and down */
};

/* X(name, kind, unit, help). Order = scoreboard slot order. */
#define CY_METRICS(X)                                                                              \
    X(clients_connected, CY_METRIC_GAUGE, "connections", "clients connected now")                  \
    X(connects_total, CY_METRIC_COUNTER, "connections", "CONNECTs accepted")                       \
    X(connects_refused, CY_METRIC_COUNTER, "connections",                                          \
      "CONNECTs refused (credentials, version, limits)")                                           \
    X(protocol_errors, CY_METRIC_COUNTER, "connections",                                           \
      "connections closed for a malformed packet or protocol error")                               \
    X(keepalive_timeouts, CY_METRIC_COUNTER, "connections",                                        \
      "connections closed for silence beyond 1.5 x keep-alive")                                    \
    X(connect_timeouts, CY_METRIC_COUNTER, "sockets",                                              \
      "sockets closed for sending no CONNECT in time")                                             \
    X(limit_preauth, CY_METRIC_COUNTER, "sockets",                                                 \
      "sockets closed before CONNECT: over max_connect_size or preauth_memory")                    \
    X(publish_received, CY_METRIC_COUNTER, "packets", "PUBLISH packets received from clients")     \
    X(publish_sent, CY_METRIC_COUNTER, "packets", "PUBLISH packets sent to clients")               \
    X(messages_dropped, CY_METRIC_COUNTER, "messages",                                             \
      "messages dropped for one subscriber (queue full, too large, slow)")                         \
    X(messages_expired, CY_METRIC_COUNTER, "messages",                                             \
      "messages dropped because their expiry interval passed")                                     \
    X(limit_packet_too_large, CY_METRIC_COUNTER, "packets", "packets refused over max_packet_size") \
    X(limit_topic_too_long, CY_METRIC_COUNTER, "topics", "topics refused over max_topic_length")   \
    X(limit_receive_max, CY_METRIC_COUNTER, "clients", "clients that exceeded the receive maximum") \
    X(limit_queue_full, CY_METRIC_COUNTER, "messages",                                             \
      "messages dropped because a session queue held max_queued")                                  \
    X(limit_connections, CY_METRIC_COUNTER, "connections", "CONNECTs refused at max_connections, sockets refused out of descriptors")  \
    X(limit_output_stall, CY_METRIC_COUNTER, "clients",                                            \
      "clients closed for staying over max_output for max_output_stall")                           \
    X(limit_subscriptions, CY_METRIC_COUNTER, "subscriptions",                                     \
      "subscriptions refused at max_subscriptions")                                                \
    X(limit_retained, CY_METRIC_COUNTER, "messages",                                               \
      "retained publishes refused at max_retained* (node or client)")                              \
    X(limit_outbox, CY_METRIC_COUNTER, "messages",                                                 \
      "publishes refused: a peer shard they must reach holds max_outbox_bytes")                    \
    X(sessions, CY_METRIC_GAUGE, "sessions", "sessions held (online and offline)")                 \
    X(subscriptions, CY_METRIC_GAUGE, "subscriptions", "subscriptions held")                       \
    X(retained_messages, CY_METRIC_GAUGE, "messages", "retained messages held")                    \
    X(acl_denied, CY_METRIC_COUNTER, "requests",                                                   \
      "publishes and subscriptions refused outside a device's topic spaces")                       \
    X(api_requests, CY_METRIC_COUNTER, "requests", "HTTP API requests answered")                   \
    X(api_calls, CY_METRIC_COUNTER, "calls", "function calls and variable reads sent to devices")  \
    X(api_call_timeouts, CY_METRIC_COUNTER, "calls",                                               \
      "function calls and variable reads the device did not answer in time")                       \
    X(api_shard_unavailable, CY_METRIC_COUNTER, "requests",                                        \
      "API requests answered 503 because the device's shard was not healthy")                      \
    X(events, CY_METRIC_COUNTER, "events", "events buffered for the API's event streams")          \
    X(store_full_refusals, CY_METRIC_COUNTER, "requests",                                          \
      "durable work refused because the data folder's disk was full")                              \
    X(publish_received_qos0, CY_METRIC_COUNTER, "packets", "PUBLISH packets received at QoS 0")    \
    X(publish_received_qos1, CY_METRIC_COUNTER, "packets", "PUBLISH packets received at QoS 1")    \
    X(publish_received_qos2, CY_METRIC_COUNTER, "packets", "PUBLISH packets received at QoS 2")    \
    X(publish_sent_qos0, CY_METRIC_COUNTER, "packets", "PUBLISH packets sent at QoS 0")            \
    X(publish_sent_qos1, CY_METRIC_COUNTER, "packets", "PUBLISH packets sent at QoS 1")            \
    X(publish_sent_qos2, CY_METRIC_COUNTER, "packets", "PUBLISH packets sent at QoS 2")            \
    X(messages_queued_online, CY_METRIC_GAUGE, "messages",                                         \
      "messages queued for connected devices (waiting for their window)")                          \
    X(events_logged, CY_METRIC_COUNTER, "events", "events appended to this shard's event log")     \
    X(webhook_attempts, CY_METRIC_COUNTER, "requests", "webhook requests made")                    \
    X(webhook_delivered, CY_METRIC_COUNTER, "events", "events delivered to a webhook (2xx)")       \
    X(webhook_failures, CY_METRIC_COUNTER, "requests",                                             \
      "webhook requests that failed and will be tried again")                                      \
    X(webhook_dead, CY_METRIC_COUNTER, "events", "events put on a webhook's dead-letter list")      \
    X(webhook_pending, CY_METRIC_GAUGE, "events",                                                  \
      "events matched by a webhook and not yet delivered nor dead-lettered (queued, in flight)")   \
    X(webhook_oldest_seconds, CY_METRIC_GAUGE, "seconds",                                          \
      "age of the oldest event a webhook has not yet delivered (0: none)")                         \
    X(coap_online, CY_METRIC_GAUGE, "devices", "devices online over CoAP (heard within coap_idle_timeout)") \
    X(coap_received, CY_METRIC_COUNTER, "messages", "CoAP messages handled (decrypted, from any shard)") \
    X(coap_dropped, CY_METRIC_COUNTER, "datagrams",                                                \
      "CoAP datagrams dropped: malformed, over a limit, for a shard that is down, unknown DTLS peers") \
    X(coap_retransmissions, CY_METRIC_COUNTER, "messages",                                         \
      "confirmable CoAP messages sent again for want of an acknowledgement")                       \
    X(coaps_handshakes, CY_METRIC_COUNTER, "handshakes", "DTLS handshakes completed")              \
    X(coaps_handshake_failures, CY_METRIC_COUNTER, "handshakes",                                   \
      "DTLS handshakes failed (bad key, unknown device, timeout) or refused over a limit")         \
    X(acl_file_denied, CY_METRIC_COUNTER, "requests",                                              \
      "publishes, subscriptions and deliveries refused by the operator's acl_file")               \
    X(auth_failures, CY_METRIC_COUNTER, "logins",                                                  \
      "failed logins: a wrong or unknown device secret (MQTT), DTLS key, or API token")            \
    X(auth_delayed, CY_METRIC_COUNTER, "logins",                                                   \
      "login attempts held auth_fail_delay before their check: address or device over "            \
      "auth_fail_burst")                                                                           \
    X(auth_locked, CY_METRIC_COUNTER, "logins",                                                    \
      "login attempts refused unchecked: address or device locked out (auth_lockout)")             \
    X(limit_connect_rate, CY_METRIC_COUNTER, "connections",                                        \
      "MQTT and HTTP connections closed at accept over max_connect_rate_per_address")              \
    X(limit_publish_rate, CY_METRIC_COUNTER, "packets",                                            \
      "publishes over max_publish_rate or max_publish_bytes_rate: refused or dropped (MQTT 5, "    \
      "CoAP), or that paused reading their connection (MQTT 3.1.1)")                              \
    X(tls_handshakes, CY_METRIC_COUNTER, "handshakes", "MQTT over TLS handshakes completed")       \
    X(tls_handshake_failures, CY_METRIC_COUNTER, "handshakes",                                     \
      "MQTT over TLS handshakes failed (bad certificate, protocol version, not TLS)")              \
    X(presence_events, CY_METRIC_COUNTER, "events",                                                \
      "status events (cyan/status: a device online or offline) logged")                            \
    X(presence_coalesced, CY_METRIC_COUNTER, "changes",                                            \
      "online and offline changes of flapping devices that got no status event of their own "     \
      "(folded into a later one, or into none when the device ended as it was announced)")

#define CY_METRIC_ONE_(name, kind, unit, help) +1
enum { CY_METRICS_N = 0 CY_METRICS(CY_METRIC_ONE_) };
#undef CY_METRIC_ONE_

/* A shard's live values: one field per metric (b->stats.publish_sent++),
 * and the same words as an array in registry order (v). */
typedef union cy_counters {
    struct {
#define CY_METRIC_FIELD_(name, kind, unit, help) uint64_t name;
        CY_METRICS(CY_METRIC_FIELD_)
#undef CY_METRIC_FIELD_
    };
    uint64_t v[CY_METRICS_N];
} cy_counters;

_Static_assert(sizeof(cy_counters) == CY_METRICS_N * sizeof(uint64_t),
               "cy_counters is the registry's words, no padding");
_Static_assert(CY_METRICS_N <= CY_SB_COUNTERS, "the scoreboard slot holds every metric");

/* The registry index of a metric by its field name, at compile time. */
#define CY_METRIC_INDEX(name) (offsetof(cy_counters, name) / sizeof(uint64_t))

typedef struct cy_metric_def {
    const char *name; /* as in CY_METRICS: [a-z_][a-z0-9_]* */
    int kind;         /* CY_METRIC_COUNTER or CY_METRIC_GAUGE */
    const char *unit; /* plural noun, or "" */
    const char *help; /* one line, for people */
} cy_metric_def;

/* The registry, CY_METRICS_N entries in CY_METRICS order. */
extern const cy_metric_def cy_metric_defs[CY_METRICS_N];

/* The index of the metric called name, or -1. */
int cy_metrics_find(const char *name);

/* Write a shard's live values into its own slot (relaxed stores), and
 * now_ms (monotonic) as the change time of each value that differs from
 * the slot's. */
void cy_metrics_publish(cy_sb_slot *slot, const cy_counters *c, int64_t now_ms);
/* One slot's values as last published (relaxed loads), registry order. */
void cy_metrics_read_slot(const cy_sb_slot *slot, uint64_t out[CY_METRICS_N]);

/* Node totals: out[i] = metric i summed over the shards of sb whose state
 * is CY_SHARD_RUNNING. With own (a shard asking about its node), shard
 * `self` contributes own instead of its slot, whatever its state. sb may be
 * NULL (a broker without scoreboard): out is then own, or zeros. Returns
 * how many shards were summed. */
unsigned cy_metrics_node_totals(const cy_scoreboard *sb, unsigned self, const cy_counters *own,
                                uint64_t out[CY_METRICS_N]);
/* The same for one metric (index < CY_METRICS_N). */
uint64_t cy_metrics_node_total(const cy_scoreboard *sb, unsigned self, const cy_counters *own,
                               size_t metric);

/* ---- latency histograms ----
 *
 * One list, CY_HISTS(X), names the latency histograms a shard keeps:
 * X(name, index, help), in scoreboard slot order (`hists[index]`), at most
 * CY_SB_HISTS of them. name is the Prometheus family without the cyan_
 * prefix and without suffix: the monitor renders cyan_<name>_bucket{le},
 * cyan_<name>_sum (seconds) and cyan_<name>_count. As with CY_METRICS,
 * append rather than reorder.
 *
 * Every histogram has the same buckets: CY_HIST_BOUNDS finite upper bounds
 * (cy_hist_bounds, seconds) and the +Inf bucket, CY_HIST_BUCKETS in all.
 * An observation of v goes in the first bucket whose bound is >= v (`le`
 * is "less or equal"), judged in whole microseconds (cy_hist_bounds_us) so
 * that a value at a bound is exact; past the last bound, +Inf. A slot
 * holds per-bucket counts, not cumulative ones, then the sum in
 * microseconds (CY_SB_HIST_WORDS words): a reader that sums them into
 * cumulative buckets always sees them grow with `le`, and the +Inf
 * cumulative count is the count, even if it read mid-update.
 */
#define CY_HISTS(X)                                                                                \
    X(api_request_duration_seconds, CY_HIST_API_REQUEST,                                           \
      "HTTP API requests: from the end of the request's head to its answer")                       \
    X(device_call_duration_seconds, CY_HIST_DEVICE_CALL,                                           \
      "function calls and variable reads: from the API request to the device's answer, or to "     \
      "the timeout")

enum {
#define CY_HIST_ENUM_(name, index, help) index,
    CY_HISTS(CY_HIST_ENUM_)
#undef CY_HIST_ENUM_
    CY_HISTS_N
};

/* The bucket bounds: X(seconds), ascending. */
#define CY_HIST_BOUNDS_LIST(X)                                                                     \
    X(0.0001) X(0.00025) X(0.0005) X(0.001) X(0.0025) X(0.005) X(0.01) X(0.025) X(0.05) X(0.1)     \
    X(0.25) X(0.5) X(1) X(2.5) X(5) X(10)

#define CY_HIST_ONE_(s) +1
enum {
    CY_HIST_BOUNDS = 0 CY_HIST_BOUNDS_LIST(CY_HIST_ONE_), /* finite bounds */
    CY_HIST_BUCKETS = CY_HIST_BOUNDS + 1,                 /* with +Inf, the last */
};
#undef CY_HIST_ONE_

_Static_assert(CY_HISTS_N <= CY_SB_HISTS, "the scoreboard slot holds every histogram");
_Static_assert(CY_HIST_BUCKETS + 1 == CY_SB_HIST_WORDS,
               "a slot's histogram is its buckets then the sum");

/* Upper bounds of the finite buckets: in seconds (for `le`), the same in
 * microseconds (what observations are compared with), and as `le` label
 * text ("0.0001" ... "10", then "+Inf": CY_HIST_BUCKETS entries). */
extern const double cy_hist_bounds[CY_HIST_BOUNDS];
extern const uint64_t cy_hist_bounds_us[CY_HIST_BOUNDS];
extern const char *const cy_hist_le[CY_HIST_BUCKETS];

typedef struct cy_hist_def {
    const char *name; /* as in CY_HISTS: [a-z_][a-z0-9_]*, ends in _seconds */
    const char *help; /* one line, for people */
} cy_hist_def;

/* The histograms, CY_HISTS_N entries in CY_HISTS order. */
extern const cy_hist_def cy_hist_defs[CY_HISTS_N];

/* One histogram: the words of its slot, and when it last moved. */
typedef struct cy_hist {
    uint64_t buckets[CY_HIST_BUCKETS]; /* observations per bucket, not cumulative */
    uint64_t sum_us;                   /* sum of the observations, microseconds */
    int64_t changed_ms;                /* monotonic ms of the last observation, 0 never */
} cy_hist;

/* A shard's live histograms (beside its cy_counters), CY_HISTS order. */
typedef struct cy_hists {
    cy_hist h[CY_HISTS_N];
} cy_hists;

/* Count one observation of `micros` microseconds in histogram index
 * (CY_HIST_*; an index out of range is ignored), made at now_ms
 * (monotonic). h may be NULL (nothing kept). */
void cy_hist_observe(cy_hists *h, size_t index, uint64_t micros, int64_t now_ms);
/* The bucket (0..CY_HIST_BUCKETS-1) an observation of micros goes in. */
size_t cy_hist_bucket(uint64_t micros);
/* Observations in h: the sum of its buckets. */
uint64_t cy_hist_count(const cy_hist *h);
/* Observations <= cy_hist_bounds[i] (i = CY_HIST_BUCKETS-1: +Inf, the
 * count): the Prometheus `_bucket{le=cy_hist_le[i]}` value. */
uint64_t cy_hist_cumulative(const cy_hist *h, size_t i);

/* Write a shard's live histograms into its own slot (relaxed stores of the
 * words that differ) and each one's last observation time. */
void cy_hists_publish(cy_sb_slot *slot, const cy_hists *h);
/* One slot's histograms as last published (relaxed loads). */
void cy_hists_read_slot(const cy_sb_slot *slot, cy_hists *out);

/* The Prometheus family name of histogram i into out (size >= 64):
 * cyan_<name>; samples append _bucket, _sum, _count. */
void cy_hists_prom_name(size_t i, char *out, size_t len);

/* The Prometheus exposition name of metric i into out (size >= 64):
 * cyan_<name>, with _total appended to a counter not already ending so. */
void cy_metrics_prom_name(size_t i, char *out, size_t len);

/* Append the Prometheus text exposition (format 0.0.4) of nsets value
 * sets to out: per metric one `# HELP` and one `# TYPE` line, then one
 * sample per set. values holds nsets * CY_METRICS_N words, set after set,
 * each in registry order. shards: NULL for a single unlabelled set (node
 * totals), or nsets shard indexes, each set's samples labelled
 * {shard="<index>"}. Returns 0 or CY_ENOMEM (out keeps what was appended). */
int cy_metrics_prometheus(cy_buf *out, const uint64_t *values, size_t nsets,
                          const unsigned *shards);

#endif
