/* coap: the CoAP transport of one shard (RFC 7252 over UDP, and over
 * DTLS 1.2 with pre-shared keys), a second binding of the device layer
 * beside MQTT: a CoAP device is a cy_link (device/link.h) of its session.
 *
 * Two sockets, both opened by the supervisor and inherited:
 *   - coap_listen (plain UDP, development only): one socket shared by every
 *     shard, so whichever shard is healthy reads a datagram. A request names
 *     its device (Uri-Query id=<device id>); the reader sends it to the
 *     device's owner shard over the bus (or handles it, when it is the
 *     owner). Our own confirmable messages carry the owner in their message
 *     id (mid % shards) and tokens (first byte), so the device's ACK, RST
 *     and separate responses are routed without state.
 *   - coaps_listen (DTLS): one socket per shard in a SO_REUSEPORT group
 *     (the kernel keeps a source address on one socket), so a device's DTLS
 *     session lives on one shard, its terminator (dtls.h). The PSK identity
 *     is the device id; the terminator sends the plaintext to the owner
 *     over the bus and the owner's answers come back the same way.
 * The owner runs everything a device is (endpoint.c): its session and
 * presence, the device convention over CoAP (docs/device-protocol.md),
 * message deduplication, our confirmable messages with their
 * retransmissions (one outstanding at a time, NSTART 1), function calls
 * and variable reads as requests to the device.
 *
 * Output (datagrams, and frames to terminators) leaves in cy_coap_flush,
 * after the store commit of the pass: an event's 2.04 never leaves before
 * the event is on disk.
 *
 * Ownership: cy_coap_new borrows everything in cy_coap_deps, which must
 * outlive it. The transport owns its endpoints (one per device heard on
 * this shard as its owner) and its DTLS peers.
 * Errors: CY_ENOMEM, -errno and libuv errors from cy_coap_open.
 * Thread: the shard's loop thread only.
 */
#ifndef CY_COAP_H
#define CY_COAP_H

#include "cluster/cluster.h"
#include "core/cy_config.h"
#include "device/device.h"
#include "health/metrics.h"
#include "router/router.h"
#include "store/space.h"
#include "store/store.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct cy_coap cy_coap;

/* registry: devices and their PSKs; store and sb are not used. */
typedef cy_transport_deps cy_coap_deps;

int cy_coap_new(const cy_coap_deps *deps, cy_coap **out);
/* Serve on the inherited sockets (duplicated, not owned): udp_fd, the
 * shared plain socket, and dtls_fd, this shard's DTLS socket; -1 = off.
 * Datagrams are read from cy_coap_accept on. */
int cy_coap_open(cy_coap *c, int udp_fd, int dtls_fd);
int cy_coap_accept(cy_coap *c);
/* Stop reading; close DTLS sessions (close_notify); endpoints go offline.
 * The last output leaves with the next cy_coap_flush. */
void cy_coap_stop(cy_coap *c);
/* Safe on NULL. Run the loop after cy_coap_stop first (handles close). */
void cy_coap_free(cy_coap *c);
/* Drill: stop reading the sockets (frames are ignored by the cluster). */
void cy_coap_stall(cy_coap *c);
/* Pass hook, after the commit: send every queued datagram and frame. */
void cy_coap_flush(cy_coap *c);
/* Is output queued? */
bool cy_coap_dirty(const cy_coap *c);
/* Retransmissions and their give-up, every ~100 ms (now: mono ms). */
void cy_coap_tick(cy_coap *c, int64_t now);
/* Every sweep: endpoints not heard for coap_idle_timeout go offline;
 * DTLS idle and handshake deadlines. */
void cy_coap_sweep(cy_coap *c, int64_t now);
/* Cluster hook for CY_FRAME_COAP_IN / CY_FRAME_COAP_OUT (ctx: c). */
void cy_coap_on_frame(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len);
/* A device was deleted: close its DTLS sessions on every shard (each
 * shard's terminator holds those of the addresses its socket gets). */
void cy_coap_kick(cy_coap *c, const char *id);
/* Devices online over CoAP on this shard (as owner). */
uint32_t cy_coap_online(const cy_coap *c);
/* Units of work done, for the scoreboard's progress: datagrams handled,
 * frames handled, retransmissions sent. */
uint64_t cy_coap_progress(const cy_coap *c);
/* Owed work, for the progress watchdog: datagrams waiting in this shard's
 * own DTLS socket (and in the plain one when it is the only shard: nobody
 * else reads it), our confirmable messages past their retransmission
 * time. Cost: two ioctl(FIONREAD) and a walk of the endpoints with a
 * message outstanding. */
uint64_t cy_coap_owed(const cy_coap *c, int64_t now);

#endif
