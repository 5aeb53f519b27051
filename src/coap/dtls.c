/* dtls: the DTLS 1.2 PSK server of dtls.h, on OpenSSL 3.0.
 *
 * Three ideas are needed to read this file.
 *
 * 1. One BIO per SSL, of our own method: its read hands OpenSSL the one
 *    datagram being input (then "retry"), its write is one datagram out
 *    through the send hook to the endpoint's address. The BIO's data is the
 *    endpoint (a peer, or the listener) that holds that datagram and
 *    address; nothing in here touches a socket.
 *
 * 2. No state before a valid cookie. A datagram from an address without a
 *    peer goes to the one reusable "listener" SSL, through DTLSv1_listen,
 *    which is stateless: it answers a ClientHello without a valid cookie
 *    with a HelloVerifyRequest and drops everything else. Cookies are
 *    HMAC-SHA256(secret, address) truncated to COOKIE_LEN; the secret is
 *    random, replaced every COOKIE_ROTATE_MS, and the previous one is
 *    accepted too. When DTLSv1_listen accepts a cookie, the listener SSL
 *    (which now holds that ClientHello) becomes the new peer's SSL, if the
 *    limits allow, and a fresh listener is made.
 *
 * 3. Hooks may close peers (cy_dtls_kick from a data hook), so a closed
 *    peer is unlinked at once (map, list, counts) but freed only when the
 *    outermost public call returns (the graveyard), and loops re-check
 *    pe->dead after each hook.
 *
 * A ClientHello (epoch 0 handshake record, message type 1) from an address
 * that already has a peer, with a client random other than that peer's
 * handshake's, is a device that restarted (or a forger): it goes through
 * the stateless cookie exchange like any new address, and only a valid
 * cookie (proof that the sender receives at that address, RFC 6347
 * 4.2.8) replaces the old peer (down with why "new handshake" if it was
 * established). A retransmitted ClientHello (same random) goes to the
 * existing peer; an established SSL drops epoch 0 records itself.
 *
 * Peers live in a map keyed by address bytes (family, port, IP, scope),
 * in one of two lists: handshaking (by start time, for deadlines and
 * retransmission timers) and established (least recently heard from
 * first, so the idle sweep looks only at the head). A second map counts
 * peers per IP address.
 *
 * Memory, measured with OpenSSL 3.0.19 and PSK-AES128-CCM8: about 35 KB
 * of heap per established peer, of which 21.8 KB is the handshake message
 * buffer that OpenSSL keeps for a DTLS connection's whole life (to answer
 * retransmissions; no public call frees it) and 7.6 KB the SSL object;
 * this file's part is under 1 KB. The record buffers are released after
 * every call with SSL_free_buffers: SSL_MODE_RELEASE_BUFFERS alone leaves
 * them allocated for DTLS (68 KB per peer). OpenSSL 3.0's DTLS write path
 * does not allocate a released write buffer again (a NULL dereference),
 * so every call that may write (handshake, read, write, timer, shutdown)
 * is preceded by SSL_alloc_buffers.
 */
#include "coap/dtls.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "core/cy_map.h"

#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <string.h>

#define COOKIE_LEN 16
#define SECRET_LEN 32
#define COOKIE_ROTATE_MS (5 * 60 * 1000)
/* family tag, port, IPv6 address, scope id */
#define ADDR_KEY_MAX (1 + 2 + 16 + 4)
#define IP_KEY_MAX (1 + 16 + 4)
/* Our BIO's type: a source/sink with an arbitrary index. Nothing in
 * OpenSSL's DTLS code looks at the type of a non-SCTP BIO. */
#define BIO_TYPE_CY_DTLS (0x7e | BIO_TYPE_SOURCE_SINK)
/* DTLS record header (13) + handshake header (12) + client_version (2) */
#define HELLO_RANDOM_OFF 27
#define RANDOM_LEN 32

#define CIPHERS                                                                                    \
    "PSK-AES128-CCM8:PSK-AES128-GCM-SHA256:PSK-AES128-CCM:PSK-AES256-GCM-SHA384:"                  \
    "PSK-CHACHA20-POLY1305"

typedef struct peer peer;
typedef struct ipcount ipcount;

typedef struct plist {
    peer *head, *tail;
} plist;

/* An endpoint: a peer with state, or the listener (embedded in cy_dtls). */
struct peer {
    cy_dtls *t;
    SSL *ssl;
    struct sockaddr_storage addr;
    socklen_t alen;
    uint8_t key[ADDR_KEY_MAX]; /* map key: lives here while in the map */
    uint8_t klen;
    bool established, dead, in_list;
    ipcount *ip;
    const uint8_t *in; /* the datagram being input (borrowed), NULL when read */
    size_t inlen;
    peer *prev, *next;  /* in t->handshaking or t->established */
    peer *gnext;        /* in t->graveyard */
    int64_t started_ms; /* when state was made (monotonic ms) */
    int64_t heard_ms;   /* last authenticated record (monotonic ms) */
    char identity[CY_DTLS_IDENTITY_MAX + 1];
};

struct ipcount {
    uint8_t key[IP_KEY_MAX];
    uint8_t klen;
    uint32_t n;
};

struct cy_dtls {
    cy_dtls_options o;
    cy_dtls_hooks h;
    cy_dtls_stats st;
    SSL_CTX *ctx;
    BIO_METHOD *meth;
    peer lsn;             /* the listener endpoint; lsn.ssl may be NULL */
    BIO_ADDR *lsn_client; /* DTLSv1_listen's out parameter, reused */
    bool hvr_sent;        /* a cookie was made during this DTLSv1_listen */
    cy_map peers;         /* address key -> peer */
    cy_map ips;           /* IP key -> ipcount */
    plist handshaking, established;
    peer *graveyard;
    int busy; /* depth of public calls: peers closed meanwhile wait */
    uint8_t secret[SECRET_LEN], prev_secret[SECRET_LEN];
    bool have_prev, have_secret;
    int64_t secret_ms; /* when secret was made (monotonic ms) */
    double tokens;     /* handshake token bucket */
    int64_t tokens_ms; /* last refill (monotonic ms) */
    bool tokens_set;
    uint8_t rbuf[SSL3_RT_MAX_PLAIN_LENGTH]; /* plaintext of one record */
};

/* --- addresses ---------------------------------------------------------- */

/* The map key of addr (with port) into key, or 0 if the address is not
 * IPv4/IPv6. With port false: the IP-only key (per-IP counts). */
static size_t addr_key(const struct sockaddr *a, socklen_t alen, bool port, uint8_t *key)
{
    size_t n = 0;
    if (a->sa_family == AF_INET && alen >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)a;
        key[n++] = 4;
        if (port) {
            memcpy(key + n, &s->sin_port, 2);
            n += 2;
        }
        memcpy(key + n, &s->sin_addr, 4);
        n += 4;
    } else if (a->sa_family == AF_INET6 && alen >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)a;
        key[n++] = 6;
        if (port) {
            memcpy(key + n, &s->sin6_port, 2);
            n += 2;
        }
        memcpy(key + n, &s->sin6_addr, 16);
        n += 16;
        memcpy(key + n, &s->sin6_scope_id, 4);
        n += 4;
    }
    return n;
}

static void set_addr(peer *pe, const struct sockaddr *a, socklen_t alen)
{
    if (alen > (socklen_t)sizeof(pe->addr)) alen = sizeof(pe->addr);
    memcpy(&pe->addr, a, alen);
    pe->alen = alen;
}

/* --- lists ---------------------------------------------------------------- */

static void list_push(plist *l, peer *pe)
{
    pe->prev = l->tail;
    pe->next = NULL;
    if (l->tail)
        l->tail->next = pe;
    else
        l->head = pe;
    l->tail = pe;
    pe->in_list = true;
}

static void list_unlink(plist *l, peer *pe)
{
    if (!pe->in_list) return;
    if (pe->prev)
        pe->prev->next = pe->next;
    else
        l->head = pe->next;
    if (pe->next)
        pe->next->prev = pe->prev;
    else
        l->tail = pe->prev;
    pe->prev = pe->next = NULL;
    pe->in_list = false;
}

/* --- the BIO ---------------------------------------------------------------- */

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int bio_read(BIO *b, char *out, int outl)
{
    peer *pe = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!pe || !pe->in || outl <= 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    /* Datagram semantics: what does not fit is lost. OpenSSL always offers
     * a buffer of a whole record, so this does not happen. */
    size_t n = pe->inlen < (size_t)outl ? pe->inlen : (size_t)outl;
    memcpy(out, pe->in, n);
    pe->in = NULL;
    pe->inlen = 0;
    return (int)n;
}

static int bio_write(BIO *b, const char *in, int inl)
{
    peer *pe = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!pe || inl < 0) return -1;
    cy_dtls *t = pe->t;
    t->h.send(t->h.ctx, (const struct sockaddr *)&pe->addr, pe->alen, (const uint8_t *)in,
              (size_t)inl);
    return inl;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    peer *pe = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
    case BIO_CTRL_WPENDING:
        return 0; /* nothing buffered: writes go out at once */
    case BIO_CTRL_DGRAM_QUERY_MTU:
        return 0; /* unknown: SSL_OP_NO_QUERY_MTU and DTLS_set_link_mtu instead */
    case BIO_CTRL_DGRAM_GET_MTU_OVERHEAD:
        return 0; /* options.mtu is the UDP payload: no header to subtract */
    case BIO_CTRL_DGRAM_GET_PEER: {
        if (!pe || !ptr) return 0;
        const struct sockaddr *a = (const struct sockaddr *)&pe->addr;
        if (a->sa_family == AF_INET) {
            const struct sockaddr_in *s = (const struct sockaddr_in *)a;
            if (!BIO_ADDR_rawmake(ptr, AF_INET, &s->sin_addr, 4, s->sin_port)) return 0;
            return (long)sizeof(*s);
        }
        if (a->sa_family == AF_INET6) {
            const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)a;
            if (!BIO_ADDR_rawmake(ptr, AF_INET6, &s->sin6_addr, 16, s->sin6_port)) return 0;
            return (long)sizeof(*s);
        }
        return 0;
    }
    case BIO_CTRL_DGRAM_SET_PEER:
    case BIO_CTRL_DGRAM_SET_CONNECTED:
        return 1; /* the address is the endpoint's; DTLSv1_listen sets it back */
    case BIO_CTRL_DGRAM_SET_NEXT_TIMEOUT:
        return 1; /* timers are polled in cy_dtls_tick */
    case BIO_CTRL_DGRAM_GET_RECV_TIMER_EXP:
    case BIO_CTRL_DGRAM_GET_SEND_TIMER_EXP:
    case BIO_CTRL_DGRAM_MTU_EXCEEDED:
        return 0;
    default:
        return 0;
    }
}

/* --- cookies ---------------------------------------------------------------- */

static void rotate_secret(cy_dtls *t, int64_t now)
{
    if (t->have_secret && now - t->secret_ms < COOKIE_ROTATE_MS) return;
    uint8_t s[SECRET_LEN];
    if (RAND_bytes(s, sizeof(s)) != 1) {
        ERR_clear_error();
        cy_warn(NULL, "dtls: no random bytes for the cookie secret; keeping the old one");
        t->secret_ms = now; /* try again at the next rotation */
        return;
    }
    if (t->have_secret) {
        memcpy(t->prev_secret, t->secret, SECRET_LEN);
        t->have_prev = true;
    }
    memcpy(t->secret, s, SECRET_LEN);
    OPENSSL_cleanse(s, sizeof(s));
    t->have_secret = true;
    t->secret_ms = now;
}

static peer *ssl_endpoint(SSL *ssl)
{
    BIO *b = SSL_get_rbio(ssl);
    return b ? BIO_get_data(b) : NULL;
}

static bool cookie_of(const uint8_t *secret, const peer *pe, uint8_t out[COOKIE_LEN])
{
    uint8_t key[ADDR_KEY_MAX], mac[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0;
    size_t klen = addr_key((const struct sockaddr *)&pe->addr, pe->alen, true, key);
    if (!klen || !HMAC(EVP_sha256(), secret, SECRET_LEN, key, klen, mac, &mlen) ||
        mlen < COOKIE_LEN)
        return false;
    memcpy(out, mac, COOKIE_LEN);
    return true;
}

static int cookie_generate(SSL *ssl, unsigned char *cookie, unsigned int *len)
{
    peer *pe = ssl_endpoint(ssl);
    if (!pe || !pe->t->have_secret || !cookie_of(pe->t->secret, pe, cookie)) return 0;
    *len = COOKIE_LEN;
    pe->t->hvr_sent = true;
    pe->t->st.cookies_sent++;
    return 1;
}

static int cookie_verify(SSL *ssl, const unsigned char *cookie, unsigned int len)
{
    peer *pe = ssl_endpoint(ssl);
    uint8_t want[COOKIE_LEN];
    if (!pe || len != COOKIE_LEN || !pe->t->have_secret) return 0;
    if (cookie_of(pe->t->secret, pe, want) && CRYPTO_memcmp(want, cookie, COOKIE_LEN) == 0)
        return 1;
    if (pe->t->have_prev && cookie_of(pe->t->prev_secret, pe, want) &&
        CRYPTO_memcmp(want, cookie, COOKIE_LEN) == 0)
        return 1;
    return 0;
}

/* --- PSK -------------------------------------------------------------------- */

static bool identity_ok(const char *id)
{
    size_t n = 0;
    for (; id[n]; n++) {
        unsigned char c = (unsigned char)id[n];
        if (c <= 0x20 || c >= 0x7f || n >= CY_DTLS_IDENTITY_MAX) return false;
    }
    return n > 0;
}

static unsigned int psk_server(SSL *ssl, const char *identity, unsigned char *psk, unsigned int max)
{
    peer *pe = ssl_endpoint(ssl);
    if (!pe || !identity || !identity_ok(identity)) return 0;
    cy_dtls *t = pe->t;
    uint8_t key[CY_DTLS_PSK_MAX];
    int r = t->h.psk(t->h.ctx, (const struct sockaddr *)&pe->addr, pe->alen, identity, key,
                     sizeof(key));
    unsigned int out = 0;
    if (r > 0 && (unsigned int)r <= max && r <= CY_DTLS_PSK_MAX) {
        memcpy(psk, key, (size_t)r);
        out = (unsigned int)r;
        snprintf(pe->identity, sizeof(pe->identity), "%s", identity);
    } else if (r != CY_ENOENT && r != CY_EACCES) {
        cy_warn(identity, "dtls: PSK lookup failed: %s", r > 0 ? "key too long" : cy_strerror(r));
    }
    OPENSSL_cleanse(key, sizeof(key));
    return out;
}

/* --- peers ------------------------------------------------------------------ */

static SSL *new_ssl(cy_dtls *t, peer *owner)
{
    SSL *ssl = SSL_new(t->ctx);
    BIO *b = ssl ? BIO_new(t->meth) : NULL;
    if (!b) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(b, owner);
    SSL_set_bio(ssl, b, b);
    if (!DTLS_set_link_mtu(ssl, t->o.mtu)) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

static void peer_free(peer *pe)
{
    if (!pe) return;
    SSL_free(pe->ssl);
    cy_free(pe);
}

/* Unlink pe from everything now; free it when the outermost call returns.
 * notify: send a close_notify (established peers only). why: for the down
 * hook, which runs for established peers. */
static void peer_close(cy_dtls *t, peer *pe, const char *why, bool notify)
{
    if (pe->dead) return;
    pe->dead = true;
    cy_map_del(&t->peers, pe->key, pe->klen);
    list_unlink(pe->established ? &t->established : &t->handshaking, pe);
    if (pe->ip && --pe->ip->n == 0) {
        cy_map_del(&t->ips, pe->ip->key, pe->ip->klen);
        cy_free(pe->ip);
    }
    pe->ip = NULL;
    t->st.peers--;
    if (pe->established) {
        t->st.established--;
        if (notify && SSL_alloc_buffers(pe->ssl)) {
            ERR_clear_error();
            (void)SSL_shutdown(pe->ssl);
        }
        ERR_clear_error();
        if (t->h.down)
            t->h.down(t->h.ctx, (const struct sockaddr *)&pe->addr, pe->alen, pe->identity, why);
    }
    pe->gnext = t->graveyard;
    t->graveyard = pe;
}

/* A handshake that will not complete. Its key was found (identity set) but
 * no Finished came that it decrypts: the peer holds another key, most
 * likely (DTLS drops undecryptable records silently, so a wrong key shows
 * as a handshake that times out), and the failed hook hears of it. */
static void handshake_failed(cy_dtls *t, peer *pe)
{
    t->st.handshakes_failed++;
    if (pe->identity[0] && t->h.failed)
        t->h.failed(t->h.ctx, (const struct sockaddr *)&pe->addr, pe->alen, pe->identity);
    peer_close(t, pe, NULL, false);
}

static void enter(cy_dtls *t)
{
    t->busy++;
}

static void leave(cy_dtls *t)
{
    if (--t->busy > 0) return;
    while (t->graveyard) {
        peer *pe = t->graveyard;
        t->graveyard = pe->gnext;
        peer_free(pe);
    }
}

static const char *cipher_name(SSL *ssl)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    return c ? SSL_CIPHER_get_name(c) : "?";
}

/* Give pe the datagram p (NULL: only what its SSL holds already) and run
 * its handshake or read its records. */
static void peer_input(cy_dtls *t, peer *pe, const uint8_t *p, size_t len, int64_t now)
{
    if (!SSL_alloc_buffers(pe->ssl)) {
        ERR_clear_error();
        cy_warn(pe->identity[0] ? pe->identity : NULL, "dtls: out of memory: datagram lost");
        return;
    }
    pe->in = p;
    pe->inlen = len;
    if (!pe->established) {
        ERR_clear_error();
        int r = SSL_do_handshake(pe->ssl);
        if (r != 1) {
            int e = SSL_get_error(pe->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                unsigned long err = ERR_peek_error();
                cy_debug(pe->identity[0] ? pe->identity : NULL, "dtls: handshake failed: %s",
                         err ? ERR_reason_error_string(err) : "closed");
                handshake_failed(t, pe);
            }
            goto done;
        }
        list_unlink(&t->handshaking, pe);
        pe->established = true;
        list_push(&t->established, pe);
        pe->heard_ms = now;
        t->st.handshakes_done++;
        t->st.established++;
        cy_debug(pe->identity, "dtls: up cipher=%s", cipher_name(pe->ssl));
        if (t->h.up) t->h.up(t->h.ctx, (const struct sockaddr *)&pe->addr, pe->alen, pe->identity);
        if (pe->dead) goto done;
    }
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(pe->ssl, t->rbuf, (int)sizeof(t->rbuf));
        if (n > 0) {
            pe->heard_ms = now;
            list_unlink(&t->established, pe);
            list_push(&t->established, pe);
            if (t->h.data)
                t->h.data(t->h.ctx, (const struct sockaddr *)&pe->addr, pe->alen, pe->identity,
                          t->rbuf, (size_t)n);
            if (pe->dead) break;
            continue;
        }
        int e = SSL_get_error(pe->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            peer_close(t, pe, "close_notify", true);
        } else {
            bool alert = (SSL_get_shutdown(pe->ssl) & SSL_RECEIVED_SHUTDOWN) != 0;
            peer_close(t, pe, alert ? "alert" : "error", false);
        }
        break;
    }
done:
    pe->in = NULL;
    /* A dead peer's SSL is freed whole when the call returns. */
    if (!pe->dead) (void)SSL_free_buffers(pe->ssl);
    ERR_clear_error();
}

/* Whether p starts with a DTLS record holding an epoch 0 ClientHello. */
static bool is_client_hello(const uint8_t *p, size_t len)
{
    return len >= 13 + 12 && p[0] == 22 && p[1] == 0xfe && p[3] == 0 && p[4] == 0 && p[13] == 1;
}

/* Whether the ClientHello p starts a handshake other than pe's. */
static bool hello_is_new(peer *pe, const uint8_t *p, size_t len)
{
    uint8_t cr[RANDOM_LEN];
    if (len < HELLO_RANDOM_OFF + RANDOM_LEN) return false; /* the listener drops it */
    if (SSL_get_client_random(pe->ssl, cr, sizeof(cr)) != sizeof(cr)) return true;
    return memcmp(cr, p + HELLO_RANDOM_OFF, RANDOM_LEN) != 0;
}

static bool take_token(cy_dtls *t, int64_t now)
{
    double rate = t->o.handshakes_per_sec;
    if (!t->tokens_set) {
        t->tokens = rate;
        t->tokens_ms = now;
        t->tokens_set = true;
    } else if (now > t->tokens_ms) {
        t->tokens += rate * (double)(now - t->tokens_ms) / 1000.0;
        if (t->tokens > rate) t->tokens = rate;
        t->tokens_ms = now;
    }
    if (t->tokens < 1.0) return false;
    t->tokens -= 1.0;
    return true;
}

/* A datagram for the listener: from an address without a peer, or a new
 * ClientHello from the address of old. */
static void listen_input(cy_dtls *t, const struct sockaddr *addr, socklen_t alen,
                         const uint8_t *key, size_t klen, const uint8_t *p, size_t len, int64_t now,
                         peer *old)
{
    if (!is_client_hello(p, len)) {
        t->st.dropped++;
        return;
    }
    if (!t->lsn.ssl && !(t->lsn.ssl = new_ssl(t, &t->lsn))) {
        t->st.dropped++;
        return;
    }
    set_addr(&t->lsn, addr, alen);
    t->lsn.in = p;
    t->lsn.inlen = len;
    t->hvr_sent = false;
    ERR_clear_error();
    int r = DTLSv1_listen(t->lsn.ssl, t->lsn_client);
    t->lsn.in = NULL;
    ERR_clear_error();
    if (r <= 0) {
        if (!t->hvr_sent) t->st.dropped++;
        if (r < 0) { /* an internal failure: start from a fresh listener */
            SSL_free(t->lsn.ssl);
            t->lsn.ssl = NULL;
        }
        return;
    }

    /* A valid cookie: the sender receives at addr. Limits, not counting
     * the peer this one replaces. */
    uint8_t ipkey[IP_KEY_MAX];
    size_t iplen = addr_key(addr, alen, false, ipkey);
    ipcount *ip = cy_map_get(&t->ips, ipkey, iplen);
    uint32_t peers = t->st.peers - (old ? 1 : 0);
    uint32_t same_ip = (ip ? ip->n : 0) - (old ? 1 : 0);
    if (peers >= t->o.max_peers || same_ip >= t->o.max_per_ip || !take_token(t, now)) {
        t->st.refused++;
        cy_debug(NULL, "dtls: refused a handshake (peers=%u same_ip=%u)", peers, same_ip);
        return; /* the listener's next DTLSv1_listen clears it */
    }
    if (old) peer_close(t, old, "new handshake", false);

    peer *pe = cy_calloc(1, sizeof(*pe));
    if (!pe) goto nomem;
    pe->t = t;
    set_addr(pe, addr, alen);
    memcpy(pe->key, key, klen);
    pe->klen = (uint8_t)klen;
    ip = cy_map_get(&t->ips, ipkey, iplen);
    if (!ip) {
        ip = cy_calloc(1, sizeof(*ip));
        if (!ip) goto nomem;
        memcpy(ip->key, ipkey, iplen);
        ip->klen = (uint8_t)iplen;
        if (cy_map_put(&t->ips, ip->key, ip->klen, ip) != 0) {
            cy_free(ip);
            goto nomem;
        }
    }
    if (cy_map_put(&t->peers, pe->key, pe->klen, pe) != 0) {
        if (ip->n == 0) {
            cy_map_del(&t->ips, ip->key, ip->klen);
            cy_free(ip);
        }
        goto nomem;
    }
    ip->n++;
    pe->ip = ip;
    pe->started_ms = now;
    list_push(&t->handshaking, pe);
    t->st.peers++;
    t->st.handshakes_started++;

    /* The listener's SSL holds the ClientHello: it becomes pe's. */
    pe->ssl = t->lsn.ssl;
    BIO_set_data(SSL_get_rbio(pe->ssl), pe);
    t->lsn.ssl = new_ssl(t, &t->lsn); /* NULL: made again at the next datagram */
    peer_input(t, pe, NULL, 0, now);
    return;
nomem:
    cy_free(pe);
    t->st.handshakes_failed++;
    cy_warn(NULL, "dtls: out of memory for a new peer");
}

/* --- the interface ---------------------------------------------------------- */

int cy_dtls_new(const cy_dtls_options *o, const cy_dtls_hooks *h, cy_dtls **out)
{
    *out = NULL;
    if (!h || !h->psk || !h->send) return CY_EINVAL;
    cy_dtls_options opt = o ? *o : (cy_dtls_options){0};
    if (!opt.max_peers) opt.max_peers = 10000;
    if (!opt.max_per_ip) opt.max_per_ip = 1024;
    if (!opt.handshakes_per_sec) opt.handshakes_per_sec = 1000;
    if (!opt.idle_ms) opt.idle_ms = 180000;
    if (!opt.handshake_ms) opt.handshake_ms = 30000;
    if (!opt.mtu) opt.mtu = 1280;
    if (opt.mtu < 256) return CY_EINVAL; /* OpenSSL's floor (DTLS_set_link_mtu) */

    int rc = CY_EIO;
    cy_dtls *t = cy_calloc(1, sizeof(*t));
    if (!t) return CY_ENOMEM;
    t->o = opt;
    t->h = *h;
    t->lsn.t = t;
    cy_map_init(&t->peers);
    cy_map_init(&t->ips);

    t->ctx = SSL_CTX_new(DTLS_server_method());
    if (!t->ctx) goto fail;
    if (!SSL_CTX_set_min_proto_version(t->ctx, DTLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(t->ctx, DTLS1_2_VERSION) ||
        !SSL_CTX_set_cipher_list(t->ctx, CIPHERS))
        goto fail;
    SSL_CTX_set_options(t->ctx, SSL_OP_NO_QUERY_MTU | SSL_OP_NO_RENEGOTIATION |
                                    SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET |
                                    SSL_OP_COOKIE_EXCHANGE);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_psk_server_callback(t->ctx, psk_server);
    SSL_CTX_set_cookie_generate_cb(t->ctx, cookie_generate);
    SSL_CTX_set_cookie_verify_cb(t->ctx, cookie_verify);

    t->meth = BIO_meth_new(BIO_TYPE_CY_DTLS, "cyan dtls");
    if (!t->meth || !BIO_meth_set_create(t->meth, bio_create) ||
        !BIO_meth_set_read(t->meth, bio_read) || !BIO_meth_set_write(t->meth, bio_write) ||
        !BIO_meth_set_ctrl(t->meth, bio_ctrl))
        goto fail;
    t->lsn_client = BIO_ADDR_new();
    if (!t->lsn_client) goto fail;
    t->lsn.ssl = new_ssl(t, &t->lsn);
    if (!t->lsn.ssl) goto fail;
    *out = t;
    return 0;
fail:
    if (ERR_peek_error()) {
        unsigned long e = ERR_peek_error();
        if (ERR_GET_REASON(e) == ERR_R_MALLOC_FAILURE) rc = CY_ENOMEM;
        cy_error(NULL, "dtls: OpenSSL setup failed: %s", ERR_reason_error_string(e));
    }
    ERR_clear_error();
    cy_dtls_free(t);
    return rc;
}

static void free_ip(void *ctx, void *value)
{
    (void)ctx;
    cy_free(value);
}

void cy_dtls_free(cy_dtls *t)
{
    if (!t) return;
    plist *lists[2] = {&t->handshaking, &t->established};
    for (int i = 0; i < 2; i++) {
        while (lists[i]->head) {
            peer *pe = lists[i]->head;
            list_unlink(lists[i], pe);
            peer_free(pe);
        }
    }
    while (t->graveyard) {
        peer *pe = t->graveyard;
        t->graveyard = pe->gnext;
        peer_free(pe);
    }
    cy_map_each(&t->ips, free_ip, NULL);
    cy_map_fini(&t->ips);
    cy_map_fini(&t->peers);
    SSL_free(t->lsn.ssl);
    BIO_ADDR_free(t->lsn_client);
    BIO_meth_free(t->meth);
    SSL_CTX_free(t->ctx);
    OPENSSL_cleanse(t->secret, sizeof(t->secret));
    OPENSSL_cleanse(t->prev_secret, sizeof(t->prev_secret));
    cy_free(t);
}

void cy_dtls_input(cy_dtls *t, const struct sockaddr *addr, socklen_t alen, const uint8_t *p,
                   size_t len, int64_t now)
{
    if (!t || !addr || (!p && len)) return;
    uint8_t key[ADDR_KEY_MAX];
    size_t klen = addr_key(addr, alen, true, key);
    if (!klen || !p) {
        t->st.dropped++;
        return;
    }
    enter(t);
    rotate_secret(t, now);
    peer *pe = cy_map_get(&t->peers, key, klen);
    if (pe && !(is_client_hello(p, len) && hello_is_new(pe, p, len)))
        peer_input(t, pe, p, len, now);
    else
        listen_input(t, addr, alen, key, klen, p, len, now, pe);
    leave(t);
}

int cy_dtls_send(cy_dtls *t, const struct sockaddr *addr, socklen_t alen, const uint8_t *p,
                 size_t len)
{
    if (!t || !addr || !p || !len) return CY_EINVAL;
    uint8_t key[ADDR_KEY_MAX];
    size_t klen = addr_key(addr, alen, true, key);
    peer *pe = klen ? cy_map_get(&t->peers, key, klen) : NULL;
    if (!pe || !pe->established || pe->dead) return CY_ENOENT;
    if (len > DTLS_get_data_mtu(pe->ssl)) return CY_EMSGSIZE;
    if (!SSL_alloc_buffers(pe->ssl)) {
        ERR_clear_error();
        return CY_ENOMEM;
    }
    enter(t);
    ERR_clear_error();
    int n = SSL_write(pe->ssl, p, (int)len);
    int rc = 0;
    if (n != (int)len) {
        unsigned long e = ERR_peek_error();
        cy_debug(pe->identity, "dtls: write failed: %s", e ? ERR_reason_error_string(e) : "?");
        rc = CY_EIO;
    }
    (void)SSL_free_buffers(pe->ssl);
    ERR_clear_error();
    leave(t);
    return rc;
}

void cy_dtls_tick(cy_dtls *t, int64_t now)
{
    if (!t) return;
    enter(t);
    rotate_secret(t, now);
    peer *next;
    for (peer *pe = t->handshaking.head; pe; pe = next) {
        next = pe->next; /* only the send hook runs below: it must not close peers */
        if (now - pe->started_ms >= (int64_t)t->o.handshake_ms) {
            cy_debug(pe->identity[0] ? pe->identity : NULL, "dtls: handshake timed out");
            handshake_failed(t, pe);
            continue;
        }
        struct timeval tv;
        ERR_clear_error();
        if (DTLSv1_get_timeout(pe->ssl, &tv) && tv.tv_sec == 0 && tv.tv_usec == 0 &&
            SSL_alloc_buffers(pe->ssl)) {
            if (DTLSv1_handle_timeout(pe->ssl) < 0) {
                handshake_failed(t, pe);
            } else {
                (void)SSL_free_buffers(pe->ssl);
            }
        }
        ERR_clear_error();
    }
    /* The head is the least recently heard from; a down hook may close
     * others, so read the head afresh each time. */
    peer *pe;
    while ((pe = t->established.head) && now - pe->heard_ms >= (int64_t)t->o.idle_ms)
        peer_close(t, pe, "idle", true);
    leave(t);
}

void cy_dtls_kick(cy_dtls *t, const char *identity)
{
    if (!t || !identity || !identity[0]) return;
    enter(t);
    plist *lists[2] = {&t->handshaking, &t->established};
    for (int i = 0; i < 2; i++) {
        /* Restart after each close: its down hook may close others. */
        for (bool again = true; again;) {
            again = false;
            for (peer *pe = lists[i]->head; pe; pe = pe->next) {
                if (strcmp(pe->identity, identity) == 0) {
                    peer_close(t, pe, "kicked", true);
                    again = true;
                    break;
                }
            }
        }
    }
    leave(t);
}

void cy_dtls_close_all(cy_dtls *t)
{
    if (!t) return;
    enter(t);
    while (t->handshaking.head)
        peer_close(t, t->handshaking.head, NULL, false);
    while (t->established.head)
        peer_close(t, t->established.head, "shutdown", true);
    leave(t);
}

const cy_dtls_stats *cy_dtls_get_stats(const cy_dtls *t)
{
    return &t->st;
}
