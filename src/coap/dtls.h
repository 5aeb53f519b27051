/* dtls: a DTLS 1.2 server for many peers on one UDP socket (OpenSSL),
 * authenticated by pre-shared keys: the PSK identity is the device id.
 *
 * The caller owns the socket: it reads each datagram and gives it to
 * cy_dtls_input with its source address; the DTLS object never touches the
 * socket and sends through the send hook. Each peer (one source address
 * and port) has its own SSL object, whose BIO reads the datagram being
 * input and writes through the hook, so one socket serves every peer.
 *
 * Against spoofed handshakes: a ClientHello from an address with no peer
 * state is answered statelessly with a HelloVerifyRequest whose cookie is
 * an HMAC of the address under a per-process secret (rotated; the previous
 * one is accepted too); state (an SSL object) is made only for a
 * ClientHello carrying a valid cookie, and then only within the limits
 * (max_peers, max_per_ip, handshakes per second). Everything else from an
 * unknown address is dropped and counted.
 *
 * A device that restarts behind the same address and port sends a fresh
 * ClientHello to an address that has a peer: that too goes through the
 * stateless cookie exchange, and only a valid cookie (the sender receives
 * at that address) replaces the old peer, whose down hook runs with why
 * "new handshake" (RFC 6347 4.2.8). A forged ClientHello cannot end a
 * session.
 *
 * Session continuity: OpenSSL 3.0 has no DTLS Connection ID (RFC 9146),
 * so a device whose NAT mapping changed is a new peer: it does a new PSK
 * handshake (no public-key operation: cheap for both ends), after which
 * the old peer idles out. docs/architecture.md says why.
 *
 * Ownership: cy_dtls_new copies the options and hooks; the caller keeps
 * nothing alive for it but the hooks' ctx. Buffers passed in are borrowed
 * for the call; buffers passed to hooks are borrowed for the hook's call.
 * Hooks run inside cy_dtls_input, cy_dtls_send, cy_dtls_tick,
 * cy_dtls_kick and cy_dtls_close_all; a hook must not free the cy_dtls.
 * The up, data and down hooks may call cy_dtls_send and cy_dtls_kick;
 * the psk and send hooks run inside OpenSSL, and the failed hook inside
 * cy_dtls_input or cy_dtls_tick: they must not call any cy_dtls function.
 * Errors: CY_ENOMEM, CY_EIO (OpenSSL setup), CY_ENOENT (no established
 * peer at that address), CY_EMSGSIZE (plaintext over the record limit),
 * CY_EINVAL (a missing psk or send hook, an mtu under 256, an empty send).
 * Thread: one thread per cy_dtls (the shard's loop).
 */
#ifndef CY_COAP_DTLS_H
#define CY_COAP_DTLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct cy_dtls cy_dtls;

/* The largest PSK the lookup may return. */
#define CY_DTLS_PSK_MAX 64
/* The largest identity accepted (a device id is 24 characters). */
#define CY_DTLS_IDENTITY_MAX 128

typedef struct cy_dtls_hooks {
    /* The key for identity (NUL-terminated, borrowed) into key[0..max)
     * for the peer at addr: its length (> 0), or a negative CY_E*
     * (CY_ENOENT: unknown identity or no key; CY_EACCES: refused, e.g. a
     * lockout, not logged here; anything else: a lookup failure). The
     * handshake fails with an alert but for a length. */
    int (*psk)(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity,
               uint8_t *key, size_t max);
    /* Write one datagram to addr. A failure is not retried (DTLS
     * retransmits its handshake flights; the layer above its own data). */
    void (*send)(void *ctx, const struct sockaddr *addr, socklen_t alen, const uint8_t *p,
                 size_t len);
    /* The handshake with the peer at addr completed for identity. */
    void (*up)(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity);
    /* Application data (one record's plaintext) from the established peer
     * at addr, authenticated as identity. */
    void (*data)(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity,
                 const uint8_t *p, size_t len);
    /* An established peer is gone. why (static text): "close_notify" (it
     * closed), "alert" (it sent a fatal alert), "error" (a fatal protocol
     * error), "idle" (not heard from for idle_ms), "kicked"
     * (cy_dtls_kick), "shutdown" (cy_dtls_close_all), "new handshake"
     * (a ClientHello with a valid cookie from its address). Not called
     * for peers that never completed their handshake. */
    void (*down)(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity,
                 const char *why);
    /* May be NULL. A handshake for identity, whose key psk gave, failed or
     * timed out (handshake_ms): the peer holds another key, most likely (a
     * record under a wrong key is dropped silently, RFC 6347 4.1.2.7, so a
     * wrong key shows as a handshake that never ends), or its flights were
     * lost. A failed login. */
    void (*failed)(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity);
    void *ctx;
} cy_dtls_hooks;

/* idle_ms counts from the peer's last authenticated record (application data). */
typedef struct cy_dtls_options {
    uint32_t max_peers;          /* peers with state (handshaking or established); 0 = 10000 */
    uint32_t max_per_ip;         /* of them from one IP address, any port; 0 = 1024 */
    uint32_t handshakes_per_sec; /* new stateful handshakes per second; 0 = 1000 */
    uint32_t idle_ms;            /* established, not heard from this long: closed; 0 = 180000 */
    uint32_t handshake_ms;       /* a handshake not done in this long is dropped; 0 = 30000 */
    uint16_t mtu;                /* largest datagram sent (UDP payload), >= 256; 0 = 1280 */
} cy_dtls_options;

/* dropped does not count bad records of a peer: OpenSSL discards those
 * silently (RFC 6347 4.1.2.7) and does not say so. */
typedef struct cy_dtls_stats {
    uint64_t cookies_sent;       /* HelloVerifyRequests */
    uint64_t handshakes_started; /* cookie verified, state made */
    uint64_t handshakes_done;
    uint64_t handshakes_failed; /* alerts, bad PSK, timeouts */
    uint64_t refused;           /* over a limit: max_peers, max_per_ip, rate */
    uint64_t dropped;           /* from unknown addresses and not a ClientHello */
    uint32_t peers;             /* now, handshaking and established */
    uint32_t established;       /* now */
} cy_dtls_stats;

int cy_dtls_new(const cy_dtls_options *o, const cy_dtls_hooks *h, cy_dtls **out);
/* Free every peer (no alert is sent, no hook runs). Safe on NULL. */
void cy_dtls_free(cy_dtls *t);
/* One datagram read from the socket, from addr. now: monotonic ms. */
void cy_dtls_input(cy_dtls *t, const struct sockaddr *addr, socklen_t alen, const uint8_t *p,
                   size_t len, int64_t now);
/* Encrypt p as one record to the established peer at addr (sent through
 * the send hook). Errors: CY_ENOENT, CY_EMSGSIZE (over mtu minus the
 * record overhead of the negotiated cipher), CY_EINVAL (len 0), CY_EIO. */
int cy_dtls_send(cy_dtls *t, const struct sockaddr *addr, socklen_t alen, const uint8_t *p,
                 size_t len);
/* Handshake retransmissions, handshake deadlines, idle peers. Call about
 * every 100 ms. now: monotonic ms. */
void cy_dtls_tick(cy_dtls *t, int64_t now);
/* Close the peers authenticated as identity (the device was removed or
 * its key changed) with a close_notify; down runs for each established
 * one (handshaking ones that already named identity are dropped too). */
void cy_dtls_kick(cy_dtls *t, const char *identity);
/* Close every peer with a close_notify (shutting down; handshaking
 * peers are dropped without one); down runs for each established one. */
void cy_dtls_close_all(cy_dtls *t);
const cy_dtls_stats *cy_dtls_get_stats(const cy_dtls *t);

#endif
