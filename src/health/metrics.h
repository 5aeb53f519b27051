/* metrics: the counters of a shard (placeholder until the registry lands). */
#ifndef CY_METRICS_H
#define CY_METRICS_H

#include <stdint.h>

/* The counters, X(name, what it counts). Published as $SYS/cyan/<name>. */
#define CY_COUNTERS(X)                                                                             \
    X(clients_connected, "clients connected now")                                                  \
    X(connects_total, "CONNECTs accepted")                                                         \
    X(connects_refused, "CONNECTs refused (credentials, version, limits)")                         \
    X(protocol_errors, "connections closed for a malformed packet or protocol error")              \
    X(keepalive_timeouts, "connections closed for silence beyond 1.5 x keep-alive")                \
    X(connect_timeouts, "sockets closed for sending no CONNECT in time")                           \
    X(limit_preauth, "sockets closed before CONNECT: over max_connect_size or preauth_memory")     \
    X(publish_received, "PUBLISH packets received from clients")                                   \
    X(publish_sent, "PUBLISH packets sent to clients")                                             \
    X(messages_dropped, "messages dropped for one subscriber (queue full, too large, slow)")       \
    X(messages_expired, "messages dropped because their expiry interval passed")                   \
    X(limit_packet_too_large, "packets refused over max_packet_size")                              \
    X(limit_topic_too_long, "topics refused over max_topic_length")                                \
    X(limit_receive_max, "clients that exceeded the receive maximum")                              \
    X(limit_queue_full, "messages dropped because a session queue held max_queued")                \
    X(limit_connections, "CONNECTs refused at max_connections")                                    \
    X(limit_output_stall, "clients closed for staying over max_output for max_output_stall")      \
    X(limit_subscriptions, "subscriptions refused at max_subscriptions")                           \
    X(limit_retained, "retained publishes refused at max_retained* (node or client)")             \
    X(limit_outbox, "publishes refused: a peer shard they must reach holds max_outbox_bytes")     \
    X(sessions, "sessions held (online and offline)")                                              \
    X(subscriptions, "subscriptions held")                                                         \
    X(retained_messages, "retained messages held")                                               \
    X(acl_denied, "publishes and subscriptions refused outside a device's topic spaces")         \
    X(api_requests, "HTTP API requests answered")                                                \
    X(api_calls, "function calls and variable reads sent to devices")                            \
    X(api_call_timeouts, "function calls and variable reads the device did not answer in time")  \
    X(api_shard_unavailable, "API requests answered 503 because the device's shard was not healthy") \
    X(events, "events buffered for the API's event streams")                                      \
    X(store_full_refusals, "durable work refused because the data folder's disk was full")

typedef struct cy_counters {
#define CY_COUNTER_FIELD(name, doc) uint64_t name;
    CY_COUNTERS(CY_COUNTER_FIELD)
#undef CY_COUNTER_FIELD
} cy_counters;

#endif
