/* cy_tls: TLS 1.2 and 1.3 over a byte stream (MQTT over TLS, mqtts_listen),
 * as an engine that touches no socket.
 *
 * The caller reads ciphertext from its socket and lends it to the engine
 * (cy_tls_input), asks for plaintext (cy_tls_read, which also runs the
 * handshake), hands it plaintext to send (cy_tls_write) and writes out the
 * ciphertext the engine produced (cy_tls_out: handshake messages, records,
 * alerts). OpenSSL does the work through a BIO of our own (the "memory
 * BIO" of this engine): its read copies from the lent input, its write
 * appends to the engine's output buffer. So the caller's read buffer can be
 * one shared by every connection: once cy_tls_read says CY_EAGAIN, OpenSSL
 * has taken every byte it was lent (a partial record waits in OpenSSL's own
 * record buffer, which SSL_MODE_RELEASE_BUFFERS frees between records), and
 * an idle connection holds only its SSL object and keys (about 24 KB,
 * measured with OpenSSL 3.0.19, TLS 1.3 and a P-256 certificate).
 *
 * Contexts (cy_tls_ctx) carry the certificate chain, the key, the CA that
 * signs client certificates, the protocol floor (TLS 1.2 at least, never
 * below) and the TLS 1.2 cipher list (ECDHE with AES-GCM or ChaCha20-Poly1305
 * only by default; TLS 1.3's suites are all AEAD), at OpenSSL security level 2.
 * A context is reference counted: every engine holds a reference, so a
 * certificate reload builds a new context for new connections while
 * established ones keep theirs.
 *
 * Client certificates (server contexts with a CA): requested, not required.
 * One that is sent and does not verify fails the handshake; one that
 * verifies can be matched against a device id (cy_tls_peer_is).
 *
 * Ownership: input is borrowed until cy_tls_read returns CY_EAGAIN (or an
 * error); the output buffer is the engine's (the caller may consume it, or
 * move its bytes away and cy_buf_init it). Option strings are read during
 * cy_tls_ctx_new only.
 * Errors: CY_EAGAIN (more ciphertext needed, or the handshake is not done
 * for a write), CY_EPIPE (the peer closed the TLS session: close_notify),
 * CY_EPROTO (bad records, a failed handshake or certificate; the engine is
 * dead from then on, cy_tls_why says why), CY_ENOMEM, CY_ECONFIG (a
 * context's files or settings; err says which file and why).
 * Thread: an engine and its context belong to one thread at a time; the
 * reference count is not atomic (a shard's loop).
 */
#ifndef CY_TLS_H
#define CY_TLS_H

#include "core/cy_buf.h"
#include "core/cy_config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cy_tls_ctx cy_tls_ctx;
typedef struct cy_tls cy_tls;

/* What OpenSSL holds for one server connection during its handshake (SSL
 * object, handshake buffer and keys, a record buffer each way: 78 KB
 * measured, as above) and once it is done (24 KB): counted in the shard's
 * preauth_memory until the client has logged in. A client certificate
 * chain may add up to CY_TLS_MAX_CERT_LIST during the handshake. */
#define CY_TLS_HANDSHAKE_BYTES (80u << 10)
#define CY_TLS_SESSION_BYTES (24u << 10)
#define CY_TLS_MAX_CERT_LIST (32u << 10)

typedef struct cy_tls_options {
    const char *cert;        /* PEM: certificate chain, leaf first (server: required) */
    const char *key;         /* PEM: its private key (server: required) */
    const char *ca;          /* PEM bundle. Server: CAs of client certificates (requested,
                              * not required). Client: CAs that verify the server. NULL or
                              * "" = none */
    const char *ciphers;     /* OpenSSL cipher list for TLS 1.2; NULL or "" = the default */
    const char *min_version; /* "1.2" (NULL or "" too) or "1.3" */
    const char *max_version; /* "1.2" or "1.3" (NULL or "" too) */
    bool client;             /* a client context (tests, tools) */
} cy_tls_options;

/* A server's options from the settings (tls_cert, tls_key, tls_ca,
 * tls_ciphers, tls_min_version; the strings are borrowed from cfg). */
void cy_tls_options_of(const cy_config *cfg, cy_tls_options *o);

/* A context from files. Fails with CY_ECONFIG and a message in err (may be
 * NULL) naming the file: unreadable, not PEM, a key that does not match
 * the certificate, a key too weak for security level 2, a bad cipher list
 * or version. *out has one reference. */
int cy_tls_ctx_new(const cy_tls_options *o, cy_tls_ctx **out, char *err, size_t errlen);
/* Check a server's files as cy_tls_ctx_new would (the supervisor, at start
 * and on SIGHUP), building nothing that stays. */
int cy_tls_check(const cy_tls_options *o, char *err, size_t errlen);
cy_tls_ctx *cy_tls_ctx_ref(cy_tls_ctx *ctx);
/* Drop a reference; the last one frees. Safe on NULL. */
void cy_tls_ctx_unref(cy_tls_ctx *ctx);
/* Does the context ask clients for a certificate (a CA was given)? */
bool cy_tls_ctx_client_certs(const cy_tls_ctx *ctx);

/* An engine for one connection (server side for a server context, client
 * side for a client one). Takes a reference on ctx. CY_ENOMEM. */
int cy_tls_new(cy_tls_ctx *ctx, cy_tls **out);
/* Safe on NULL. Drops the context reference. */
void cy_tls_free(cy_tls *t);

/* Lend len bytes of ciphertext (borrowed; see the file comment). Replaces
 * what is left of earlier input, which must have been taken already. */
void cy_tls_input(cy_tls *t, const uint8_t *p, size_t len);
/* Bytes of the lent input OpenSSL has not taken yet. */
size_t cy_tls_input_left(const cy_tls *t);
/* Start or continue the handshake without reading application data (a
 * client must call it first: it speaks first). 0 once done, CY_EAGAIN,
 * CY_EPROTO, CY_ENOMEM. */
int cy_tls_handshake(cy_tls *t);
/* Up to cap (> 0) bytes of plaintext into buf: 0 and *n > 0, or CY_EAGAIN
 * once the lent input is used up (output may have been produced: the
 * handshake, a TLS 1.3 key update), CY_EPIPE, CY_EPROTO, CY_ENOMEM. Runs
 * the handshake first. Call until it returns non-zero. */
int cy_tls_read(cy_tls *t, uint8_t *buf, size_t cap, size_t *n);
/* Encrypt all of p[0..len) into the output, in as few records as the
 * record size allows (16 KB each). CY_EAGAIN before the handshake is
 * done (nothing written), CY_EPROTO, CY_ENOMEM. */
int cy_tls_write(cy_tls *t, const uint8_t *p, size_t len);
/* Append a close_notify alert to the output (after the handshake only;
 * best effort). */
void cy_tls_close(cy_tls *t);
/* The ciphertext waiting to be written (engine-owned). */
cy_buf *cy_tls_out(cy_tls *t);
/* The handshake is done. */
bool cy_tls_established(const cy_tls *t);
/* Why the engine failed (CY_EPROTO), as text for a log line: OpenSSL's
 * reason, the certificate verification error. Static storage, good until
 * the next call. */
const char *cy_tls_why(const cy_tls *t);
/* The negotiated version and cipher, e.g. "TLSv1.3 TLS_AES_128_GCM_SHA256"
 * (static storage, good until the next call); "" before the handshake. */
const char *cy_tls_describe(const cy_tls *t);
/* Did the peer present a certificate that verified against the context's
 * CA and that names id (len bytes): its subject CN, or a DNS or URI entry
 * of its subject alternative names, byte for byte? */
bool cy_tls_peer_is(const cy_tls *t, const char *id, size_t len);

#endif
