/* gateway: the MQTT transport of one shard (3.1.1 and 5.0 over TCP, TLS
 * and WebSocket; conn.c says how TLS fits, proxy.c how a shard terminates
 * TLS for another shard's device, ws.c how a WebSocket becomes a
 * connection).
 *
 * It accepts connections on the shard's listening socket, frames and
 * decodes packets, runs the per-packet handlers (handle_*.c) and writes
 * replies. What a packet means to a device (sessions, admission, calls)
 * is the device layer's (device.h): each connection is a cy_link of it.
 *
 * Output: handlers append encoded packets to per-connection buffers; the
 * shard's loop flushes them after the store commit of the pass
 * (cy_mqtt_flush), so an acknowledgement never leaves before what it
 * acknowledges is on disk.
 *
 * Ownership: cy_mqtt_new borrows everything in cy_mqtt_deps, which must
 * outlive it; the gateway owns its connections and their sockets (an epoll
 * set of its own, which libuv polls as one descriptor from the first
 * cy_mqtt_open or handed-in connection on; a connection is freed after the
 * poll phase of the loop turn that closed it; run the loop after
 * cy_mqtt_stop, then cy_mqtt_free, which frees what closed after the stop).
 * Errors: CY_ENOMEM, -errno or libuv errors from cy_mqtt_open.
 * Thread: the shard's loop thread only.
 */
#ifndef CY_GATEWAY_H
#define CY_GATEWAY_H

#include "cluster/cluster.h"
#include "core/cy_config.h"
#include "device/device.h"
#include "health/metrics.h"
#include "health/scoreboard.h"
#include "http/http.h"
#include "router/router.h"
#include "store/space.h"
#include "store/store.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct cy_mqtt cy_mqtt;

/* sb: the node-wide connection count (NULL = this shard only). */
typedef cy_transport_deps cy_mqtt_deps;

int cy_mqtt_new(const cy_mqtt_deps *deps, cy_mqtt **out);
/* Serve on the inherited listening socket fd (duplicated; not owned). The
 * socket listens already; connections are taken from cy_mqtt_accept on. */
int cy_mqtt_open(cy_mqtt *g, int fd);
/* Serve MQTT over TLS on the inherited listening socket fd (duplicated):
 * a TLS context from cfg's tls_* settings. CY_ECONFIG (logged, naming the
 * file) when the files do not make one: the shard then serves no TLS (the
 * other shards take the shared socket's connections). */
int cy_mqtt_open_tls(cy_mqtt *g, int fd);
/* After a reload: a new TLS context from the tls_* settings for new
 * connections (established ones keep theirs); broken files are logged and
 * the context in use is kept. Nothing without a TLS listener. */
void cy_mqtt_tls_reload(cy_mqtt *g);
int cy_mqtt_accept(cy_mqtt *g);
/* Refuse new CONNECTs (shutting down), close every connection (MQTT 5
 * clients get 0x8B) and the listener. Their last output leaves, and their
 * sockets close, with the next cy_mqtt_flush (after the store commit). */
void cy_mqtt_stop(cy_mqtt *g);
/* Safe on NULL. */
void cy_mqtt_free(cy_mqtt *g);
/* Drill: stop reading every connection; new ones are accepted, never read. */
void cy_mqtt_stall(cy_mqtt *g);
/* Pass hook, after the commit: write every connection's output, the
 * connections in the order their output began. */
void cy_mqtt_flush(cy_mqtt *g);
/* Call fn(ctx) after each read callback of a client socket has handled its
 * input (the shard may end the pass there: shard.c, "early pass end").
 * fn may call cy_mqtt_flush; it must not free the gateway. NULL: none. */
void cy_mqtt_on_input(cy_mqtt *g, void (*fn)(void *ctx), void *ctx);
/* Has any connection output not yet flushed? */
bool cy_mqtt_dirty(const cy_mqtt *g);
/* Every sweep: connect and keep-alive timeouts, back-pressure stalls,
 * idle buffers. now: mono ms (the loop's). */
void cy_mqtt_sweep(cy_mqtt *g, int64_t now);
uint32_t cy_mqtt_connections(const cy_mqtt *g);
/* Units of work done, for the scoreboard's progress: reads (bytes or an
 * end taken from a socket), packets handled, connections refused at
 * max_connections. */
uint64_t cy_mqtt_progress(const cy_mqtt *g);
/* Owed input, for the progress watchdog (health/watchdog.h): how many
 * client sockets hold bytes in the kernel that this shard does not read
 * and should (not paused for back-pressure, not closing, not handed over;
 * a socket the stall drill stopped, or accepted while stalled, counts),
 * plus the connections waiting in the listening socket's accept queue
 * once it accepts. Cost: one getsockopt for the accept queue; while some
 * connection is not read (paused, closing, stalled), a walk of the
 * connections (memory only) and one ioctl(FIONREAD) per socket whose
 * reading is stopped (and per socketpair of a TLS connection terminated
 * for another shard). Both listeners' accept queues count. 0 once
 * stopping. */
uint64_t cy_mqtt_owed_input(const cy_mqtt *g);

/* MQTT over WebSocket (ws.c): the HTTP API upgraded a GET /mqtt with
 * subprotocol mqtt. fd: the device's socket (taken over: closed here, also
 * on failure); extra: bytes it sent past the request head (WebSocket
 * frames, copied as needed); peer: its address (copied, may be NULL); u:
 * the HTTP server's handle, closed (cy_http_upgraded_close) when the
 * connection ends, or at once on failure. */
void cy_mqtt_ws_accept(cy_mqtt *g, int fd, const uint8_t *extra, size_t len,
                       const struct sockaddr *peer, cy_http_upgraded *u);

/* Cluster hooks (cluster.h; ctx: the gateway). */
void cy_mqtt_adopt(void *ctx, unsigned from, int fd, const cy_handover_info *info,
                   const uint8_t *bytes, size_t len);
void cy_mqtt_release_held(void *ctx, cy_held_owner *o, const uint8_t *bytes, size_t len);

#endif
