/* Unit tests for coap/dtls: the DTLS 1.2 PSK server, over real UDP
 * sockets on 127.0.0.1 (and 127.0.0.2 for a second IP address).
 *
 * The server side is a cy_dtls fed by a recvfrom loop; the clients are
 * OpenSSL DTLS clients (BIO_new_dgram on connected UDP sockets, a PSK
 * client callback) driven from the same thread: pump() steps every client,
 * polls, feeds every datagram that arrived to cy_dtls_input and ticks.
 * WAIT_FOR pumps until a condition holds, for at most 5 seconds, so every
 * test waits for an event that must come. Time as the server sees it is
 * now_ms(): the monotonic clock plus a skew the idle and deadline tests
 * advance, or a frozen value for the rate test. The last test runs Debian's
 * coap-client-openssl (libcoap 4.3.1) against the server when installed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "coap/dtls.h"
#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define WAIT_MS 5000

static int64_t g_skew, g_frozen;

static int64_t now_ms(void)
{
    return g_frozen ? g_frozen : cy_mono_ms() + g_skew;
}

/* --- the server side ------------------------------------------------------ */

typedef struct srv {
    cy_dtls *t;
    int fd;
    struct sockaddr_in addr;
    int ups, downs, datas, psk_calls, sends, fails;
    size_t max_dgram;
    char up_id[CY_DTLS_IDENTITY_MAX + 1], down_id[CY_DTLS_IDENTITY_MAX + 1], down_why[32];
    char data_id[CY_DTLS_IDENTITY_MAX + 1];
    uint8_t data[2048];
    size_t dlen;
    struct sockaddr_storage from; /* of the last data */
    socklen_t from_len;
    bool answer_coap;    /* answer a CoAP CON request with 2.05 */
    const char *kick_on; /* data equal to this kicks its sender */
    int kick_rc_down;    /* downs seen from inside that kick */
} srv;

static int h_psk(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity,
                 uint8_t *key, size_t max)
{
    srv *s = ctx;
    s->psk_calls++;
    /* The hook learns the peer's address (the limits count failures by it). */
    assert_non_null(addr);
    assert_int_equal(addr->sa_family, AF_INET);
    assert_true(alen >= sizeof(struct sockaddr_in));
    if (strcmp(identity, "locked") == 0) return CY_EACCES;
    const char *k = NULL;
    if (strcmp(identity, "dev-1") == 0) k = "secret-1";
    if (strcmp(identity, "dev-2") == 0) k = "secret-2";
    if (!k) return CY_ENOENT;
    size_t n = strlen(k);
    assert_true(n <= max);
    memcpy(key, k, n);
    return (int)n;
}

static void h_send(void *ctx, const struct sockaddr *addr, socklen_t alen, const uint8_t *p,
                   size_t len)
{
    srv *s = ctx;
    s->sends++;
    if (len > s->max_dgram) s->max_dgram = len;
    (void)sendto(s->fd, p, len, 0, addr, alen);
}

static void h_up(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity)
{
    srv *s = ctx;
    (void)addr, (void)alen;
    s->ups++;
    snprintf(s->up_id, sizeof(s->up_id), "%s", identity);
}

static void h_data(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity,
                   const uint8_t *p, size_t len)
{
    srv *s = ctx;
    s->datas++;
    snprintf(s->data_id, sizeof(s->data_id), "%s", identity);
    s->dlen = len < sizeof(s->data) ? len : sizeof(s->data);
    memcpy(s->data, p, s->dlen);
    memcpy(&s->from, addr, alen);
    s->from_len = alen;
    if (s->kick_on && len == strlen(s->kick_on) && memcmp(p, s->kick_on, len) == 0) {
        int before = s->downs;
        cy_dtls_kick(s->t, identity);
        s->kick_rc_down = s->downs - before;
        /* the peer is gone: sending to it now finds nothing */
        assert_int_equal(cy_dtls_send(s->t, addr, alen, (const uint8_t *)"x", 1), CY_ENOENT);
    }
    /* A CoAP CON request (version 1, type 0): a piggybacked 2.05 ACK
     * with the same message id and token. */
    if (s->answer_coap && len >= 4 && (p[0] & 0xf0) == 0x40 && (size_t)(4 + (p[0] & 0x0f)) <= len) {
        uint8_t ack[12];
        size_t tkl = p[0] & 0x0f;
        ack[0] = (uint8_t)(0x60 | tkl);
        ack[1] = 0x45;
        ack[2] = p[2];
        ack[3] = p[3];
        memcpy(ack + 4, p + 4, tkl);
        assert_int_equal(cy_dtls_send(s->t, addr, alen, ack, 4 + tkl), 0);
    }
}

static void h_down(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity,
                   const char *why)
{
    srv *s = ctx;
    (void)addr, (void)alen;
    s->downs++;
    snprintf(s->down_id, sizeof(s->down_id), "%s", identity);
    snprintf(s->down_why, sizeof(s->down_why), "%s", why);
}

static int udp_socket(const char *ip, uint16_t port, struct sockaddr_in *out)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (out) *out = a;
    return fd;
}

static void h_failed(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity)
{
    srv *s = ctx;
    assert_non_null(addr);
    assert_true(alen > 0);
    assert_string_equal(identity, "dev-1");
    s->fails++;
}

static void srv_open(srv *s, const cy_dtls_options *o)
{
    memset(s, 0, sizeof(*s));
    g_skew = 0;
    g_frozen = 0;
    s->fd = udp_socket("127.0.0.1", 0, &s->addr);
    cy_dtls_hooks h = {.psk = h_psk,
                       .send = h_send,
                       .up = h_up,
                       .data = h_data,
                       .down = h_down,
                       .failed = h_failed,
                       .ctx = s};
    assert_int_equal(cy_dtls_new(o, &h, &s->t), 0);
}

static void srv_close(srv *s)
{
    cy_dtls_free(s->t);
    close(s->fd);
}

static const cy_dtls_stats *st(srv *s)
{
    return cy_dtls_get_stats(s->t);
}

/* --- the client side ------------------------------------------------------ */

typedef struct cli {
    int fd;
    struct sockaddr_in addr;
    SSL_CTX *ctx;
    SSL *ssl;
    const char *id, *key;
    bool done, failed, closed;
    uint8_t rx[2048];
    size_t rxlen;
    int rxn;
} cli;

static unsigned int cli_psk(SSL *ssl, const char *hint, char *identity, unsigned int max_id,
                            unsigned char *psk, unsigned int max_psk)
{
    (void)hint;
    cli *c = SSL_get_app_data(ssl);
    size_t n = strlen(c->key);
    if (strlen(c->id) + 1 > max_id || n > max_psk) return 0;
    strcpy(identity, c->id);
    memcpy(psk, c->key, n);
    return (unsigned int)n;
}

/* A client at ip (port 0: any) for s, not started. */
static void cli_open(cli *c, srv *s, const char *ip, uint16_t port, const char *id, const char *key)
{
    memset(c, 0, sizeof(*c));
    c->id = id;
    c->key = key;
    c->fd = udp_socket(ip, port, &c->addr);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&s->addr, sizeof(s->addr)), 0);
    c->ctx = SSL_CTX_new(DTLS_client_method());
    assert_non_null(c->ctx);
    SSL_CTX_set_min_proto_version(c->ctx, DTLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(c->ctx, DTLS1_2_VERSION);
    assert_int_equal(SSL_CTX_set_cipher_list(c->ctx, "PSK-AES128-CCM8:PSK-AES128-GCM-SHA256"), 1);
    SSL_CTX_set_psk_client_callback(c->ctx, cli_psk);
    c->ssl = SSL_new(c->ctx);
    assert_non_null(c->ssl);
    SSL_set_app_data(c->ssl, c);
    BIO *b = BIO_new_dgram(c->fd, BIO_NOCLOSE);
    assert_non_null(b);
    BIO_ADDR *peer = BIO_ADDR_new();
    BIO_ADDR_rawmake(peer, AF_INET, &s->addr.sin_addr, 4, s->addr.sin_port);
    BIO_ctrl_set_connected(b, peer);
    BIO_ADDR_free(peer);
    SSL_set_bio(c->ssl, b, b);
    SSL_set_connect_state(c->ssl);
}

static void cli_close(cli *c)
{
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    close(c->fd);
    c->fd = -1;
}

static void cli_step(cli *c)
{
    if (c->failed || c->closed) return;
    if (!c->done) {
        ERR_clear_error();
        int r = SSL_do_handshake(c->ssl);
        if (r == 1) {
            c->done = true;
        } else {
            int e = SSL_get_error(c->ssl, r);
            if (e != SSL_ERROR_WANT_READ) c->failed = true;
            (void)DTLSv1_handle_timeout(c->ssl);
            ERR_clear_error();
            return;
        }
    }
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, c->rx, sizeof(c->rx));
        if (n > 0) {
            c->rxlen = (size_t)n;
            c->rxn++;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_ZERO_RETURN)
            c->closed = true;
        else if (e != SSL_ERROR_WANT_READ)
            c->failed = true;
        break;
    }
    ERR_clear_error();
}

static void cli_write(cli *c, const char *text)
{
    assert_int_equal(SSL_write(c->ssl, text, (int)strlen(text)), (int)strlen(text));
}

/* --- the loop --------------------------------------------------------------- */

static void srv_drain(srv *s)
{
    uint8_t buf[4096];
    for (;;) {
        struct sockaddr_storage from;
        socklen_t flen = sizeof(from);
        ssize_t n = recvfrom(s->fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
        if (n < 0) break;
        cy_dtls_input(s->t, (struct sockaddr *)&from, flen, buf, (size_t)n, now_ms());
    }
    cy_dtls_tick(s->t, now_ms());
}

static void pump(srv *s, cli **cs, int n)
{
    struct pollfd p[8];
    assert_true(n < 8);
    for (int i = 0; i < n; i++)
        cli_step(cs[i]);
    p[0] = (struct pollfd){.fd = s->fd, .events = POLLIN};
    for (int i = 0; i < n; i++)
        p[i + 1] = (struct pollfd){.fd = cs[i]->fd, .events = POLLIN};
    (void)poll(p, (nfds_t)n + 1, 10);
    srv_drain(s);
    for (int i = 0; i < n; i++)
        cli_step(cs[i]);
}

#define WAIT_FOR(s, cs, n, cond)                                                                   \
    do {                                                                                           \
        int64_t dl_ = cy_mono_ms() + WAIT_MS;                                                      \
        while (!(cond) && cy_mono_ms() < dl_)                                                      \
            pump(s, cs, n);                                                                        \
        assert_true(cond);                                                                         \
    } while (0)

static void handshake(srv *s, cli *c)
{
    cli *cs[1] = {c};
    int ups = s->ups;
    WAIT_FOR(s, cs, 1, c->done && s->ups == ups + 1);
}

/* --- tests ------------------------------------------------------------------ */

static void test_dtls_handshake_and_data(void **state)
{
    (void)state;
    srv s;
    cli c;
    srv_open(&s, NULL);
    cli_open(&c, &s, "127.0.0.1", 0, "dev-1", "secret-1");
    cli *cs[1] = {&c};
    handshake(&s, &c);
    assert_string_equal(s.up_id, "dev-1");
    assert_int_equal(st(&s)->cookies_sent, 1);
    assert_int_equal(st(&s)->handshakes_started, 1);
    assert_int_equal(st(&s)->handshakes_done, 1);
    assert_int_equal(st(&s)->peers, 1);
    assert_int_equal(st(&s)->established, 1);
    assert_string_equal(SSL_CIPHER_get_name(SSL_get_current_cipher(c.ssl)), "PSK-AES128-CCM8");

    cli_write(&c, "hello");
    WAIT_FOR(&s, cs, 1, s.datas == 1);
    assert_string_equal(s.data_id, "dev-1");
    assert_int_equal(s.dlen, 5);
    assert_memory_equal(s.data, "hello", 5);
    assert_int_equal(s.from_len, sizeof(struct sockaddr_in));
    assert_memory_equal(&((struct sockaddr_in *)&s.from)->sin_port, &c.addr.sin_port, 2);

    const struct sockaddr *to = (struct sockaddr *)&s.from;
    assert_int_equal(cy_dtls_send(s.t, to, s.from_len, (const uint8_t *)"world", 5), 0);
    WAIT_FOR(&s, cs, 1, c.rxn == 1);
    assert_int_equal(c.rxlen, 5);
    assert_memory_equal(c.rx, "world", 5);

    /* The largest plaintext that fits the MTU (1280) is sent in one
     * datagram of at most 1280 bytes; one byte more is CY_EMSGSIZE. */
    static uint8_t big[1400];
    memset(big, 'b', sizeof(big));
    size_t fit = 1280;
    while (fit > 0 && cy_dtls_send(s.t, to, s.from_len, big, fit) == CY_EMSGSIZE)
        fit--;
    assert_true(fit >= 1200 && fit < 1280);
    assert_int_equal(cy_dtls_send(s.t, to, s.from_len, big, fit + 1), CY_EMSGSIZE);
    assert_true(s.max_dgram <= 1280);
    WAIT_FOR(&s, cs, 1, c.rxn == 2);
    assert_int_equal(c.rxlen, fit);
    assert_int_equal(cy_dtls_send(s.t, to, s.from_len, big, 0), CY_EINVAL);

    /* An address without a peer, and one whose peer is only handshaking. */
    struct sockaddr_in other = c.addr;
    other.sin_port = htons((uint16_t)(ntohs(other.sin_port) ^ 1));
    assert_int_equal(cy_dtls_send(s.t, (struct sockaddr *)&other, sizeof(other), big, 3),
                     CY_ENOENT);
    struct sockaddr bogus = {.sa_family = AF_UNIX};
    assert_int_equal(cy_dtls_send(s.t, (struct sockaddr *)&bogus, sizeof(bogus), big, 3),
                     CY_ENOENT);

    /* The client closes: down with its identity. */
    ERR_clear_error();
    (void)SSL_shutdown(c.ssl);
    WAIT_FOR(&s, cs, 1, s.downs == 1);
    assert_string_equal(s.down_id, "dev-1");
    assert_string_equal(s.down_why, "close_notify");
    assert_int_equal(st(&s)->peers, 0);
    assert_int_equal(st(&s)->established, 0);
    assert_int_equal(cy_dtls_send(s.t, to, s.from_len, big, 3), CY_ENOENT);
    cli_close(&c);
    srv_close(&s);
}

static void test_dtls_wrong_psk(void **state)
{
    (void)state;
    srv s;
    cli c;
    cy_dtls_options o = {.handshake_ms = 2000};
    srv_open(&s, &o);
    cli_open(&c, &s, "127.0.0.1", 0, "dev-1", "not-the-key");
    cli *cs[1] = {&c};
    /* The server looked the key up, so it has the client's whole flight
     * (ClientKeyExchange and Finished travel together)... */
    WAIT_FOR(&s, cs, 1, s.psk_calls >= 1);
    assert_int_equal(st(&s)->handshakes_started, 1);
    /* ...whose Finished it cannot decrypt: DTLS drops such records
     * silently, so the handshake ends at its deadline. */
    assert_int_equal(s.fails, 0);
    g_skew += 2000;
    WAIT_FOR(&s, cs, 1, st(&s)->handshakes_failed == 1);
    /* A failed login for the identity whose key was found. */
    assert_int_equal(s.fails, 1);
    assert_int_equal(s.ups, 0);
    assert_int_equal(s.downs, 0);
    assert_int_equal(st(&s)->handshakes_done, 0);
    assert_int_equal(st(&s)->peers, 0);
    assert_false(c.done);
    cli_close(&c);
    srv_close(&s);
}

static void test_dtls_unknown_identity(void **state)
{
    (void)state;
    srv s;
    cli c;
    srv_open(&s, NULL);
    cli_open(&c, &s, "127.0.0.1", 0, "nobody", "secret-1");
    cli *cs[1] = {&c};
    WAIT_FOR(&s, cs, 1, st(&s)->handshakes_failed == 1 && c.failed);
    assert_int_equal(s.psk_calls, 1);
    assert_int_equal(s.ups, 0);
    assert_int_equal(st(&s)->peers, 0);
    /* Unprintable identities never reach the lookup. */
    cli c2;
    cli_open(&c2, &s, "127.0.0.1", 0, "dev 1", "secret-1");
    cs[0] = &c2;
    WAIT_FOR(&s, cs, 1, st(&s)->handshakes_failed == 2 && c2.failed);
    assert_int_equal(s.psk_calls, 1);
    /* A refused lookup (a lockout) fails at once too, as no failed login
     * of the DTLS layer's own: the hook counted it. */
    cli c3;
    cli_open(&c3, &s, "127.0.0.1", 0, "locked", "secret-1");
    cs[0] = &c3;
    WAIT_FOR(&s, cs, 1, st(&s)->handshakes_failed == 3 && c3.failed);
    assert_int_equal(s.psk_calls, 2);
    assert_int_equal(s.fails, 0);
    cli_close(&c3);
    cli_close(&c2);
    cli_close(&c);
    srv_close(&s);
}

static void test_dtls_garbage_dropped(void **state)
{
    (void)state;
    srv s;
    srv_open(&s, NULL);
    struct sockaddr_in a;
    int fd = udp_socket("127.0.0.1", 0, &a);
    assert_int_equal(connect(fd, (struct sockaddr *)&s.addr, sizeof(s.addr)), 0);
    assert_int_equal(send(fd, "garbage!", 8, 0), 8);
    WAIT_FOR(&s, NULL, 0, st(&s)->dropped == 1);
    /* A record header that claims a ClientHello, cut short. */
    const uint8_t cut[26] = {22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 13, 1, 0, 0, 200};
    assert_int_equal(send(fd, cut, sizeof(cut), 0), (ssize_t)sizeof(cut));
    WAIT_FOR(&s, NULL, 0, st(&s)->dropped == 2);
    /* An empty datagram, and one from an address family we do not serve. */
    assert_int_equal(send(fd, "", 0, 0), 0);
    WAIT_FOR(&s, NULL, 0, st(&s)->dropped == 3);
    struct sockaddr bogus = {.sa_family = AF_UNIX};
    cy_dtls_input(s.t, &bogus, sizeof(bogus), cut, sizeof(cut), now_ms());
    assert_int_equal(st(&s)->dropped, 4);
    assert_int_equal(st(&s)->cookies_sent, 0);
    assert_int_equal(st(&s)->peers, 0);
    assert_int_equal(s.sends, 0);
    close(fd);
    srv_close(&s);
}

static void test_dtls_hello_without_cookie_makes_no_state(void **state)
{
    (void)state;
    srv s;
    cli c;
    srv_open(&s, NULL);
    cli_open(&c, &s, "127.0.0.1", 0, "dev-1", "secret-1");
    cli_step(&c); /* the ClientHello, without a cookie */
    WAIT_FOR(&s, NULL, 0, st(&s)->cookies_sent == 1);
    assert_int_equal(st(&s)->peers, 0);
    assert_int_equal(st(&s)->handshakes_started, 0);
    assert_int_equal(s.sends, 1);
    /* The HelloVerifyRequest was right: the client goes on and finishes. */
    handshake(&s, &c);
    assert_int_equal(st(&s)->handshakes_started, 1);
    cli_close(&c);
    srv_close(&s);
}

/* The client goes quiet after the server's flight: the server's timer
 * (1 s) resends the flight from cy_dtls_tick; then the client finishes. */
static void test_dtls_server_retransmits(void **state)
{
    (void)state;
    srv s;
    cli c;
    srv_open(&s, NULL);
    cli_open(&c, &s, "127.0.0.1", 0, "dev-1", "secret-1");
    cli_step(&c); /* ClientHello */
    WAIT_FOR(&s, NULL, 0, s.sends == 1);
    struct pollfd p = {.fd = c.fd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, WAIT_MS), 1);
    cli_step(&c); /* the HelloVerifyRequest in, ClientHello with the cookie out */
    WAIT_FOR(&s, NULL, 0, st(&s)->handshakes_started == 1);
    int flight = s.sends;
    assert_true(flight >= 2);
    WAIT_FOR(&s, NULL, 0, s.sends > flight); /* not stepping the client */
    assert_int_equal(st(&s)->handshakes_failed, 0);
    handshake(&s, &c);
    assert_int_equal(st(&s)->handshakes_started, 1);
    cli_close(&c);
    srv_close(&s);
}

static void test_dtls_max_peers(void **state)
{
    (void)state;
    srv s;
    cli a, b;
    cy_dtls_options o = {.max_peers = 1};
    srv_open(&s, &o);
    cli_open(&a, &s, "127.0.0.1", 0, "dev-1", "secret-1");
    handshake(&s, &a);
    cli_open(&b, &s, "127.0.0.2", 0, "dev-2", "secret-2");
    cli *cs[2] = {&a, &b};
    WAIT_FOR(&s, cs, 2, st(&s)->refused >= 1);
    assert_int_equal(st(&s)->peers, 1);
    assert_int_equal(st(&s)->handshakes_started, 1);
    assert_false(b.done);
    /* A place frees up: the next retransmission of b's ClientHello gets in. */
    cy_dtls_kick(s.t, "dev-1");
    WAIT_FOR(&s, cs, 2, b.done && s.ups == 2);
    assert_string_equal(s.up_id, "dev-2");
    cli_close(&a);
    cli_close(&b);
    srv_close(&s);
}

static void test_dtls_max_per_ip(void **state)
{
    (void)state;
    srv s;
    cli a, b, c;
    cy_dtls_options o = {.max_per_ip = 1};
    srv_open(&s, &o);
    cli_open(&a, &s, "127.0.0.1", 0, "dev-1", "secret-1");
    handshake(&s, &a);
    cli_open(&b, &s, "127.0.0.1", 0, "dev-2", "secret-2");
    cli *cs[2] = {&a, &b};
    WAIT_FOR(&s, cs, 2, st(&s)->refused >= 1);
    assert_int_equal(st(&s)->peers, 1);
    assert_false(b.done);
    cli_open(&c, &s, "127.0.0.2", 0, "dev-2", "secret-2");
    handshake(&s, &c);
    assert_int_equal(st(&s)->peers, 2);
    cli_close(&a);
    cli_close(&b);
    cli_close(&c);
    srv_close(&s);
}

static void test_dtls_handshake_rate(void **state)
{
    (void)state;
    srv s;
    cli a, b;
    cy_dtls_options o = {.handshakes_per_sec = 1};
    srv_open(&s, &o);
    g_frozen = cy_mono_ms();
    cli_open(&a, &s, "127.0.0.1", 0, "dev-1", "secret-1");
    handshake(&s, &a);
    cli_open(&b, &s, "127.0.0.2", 0, "dev-2", "secret-2");
    cli *cs[2] = {&a, &b};
    WAIT_FOR(&s, cs, 2, st(&s)->refused >= 1);
    assert_int_equal(st(&s)->handshakes_started, 1);
    /* A second later there is a token again (b retransmits after 1 s). */
    g_frozen += 1000;
    WAIT_FOR(&s, cs, 2, b.done && s.ups == 2);
    cli_close(&a);
    cli_close(&b);
    srv_close(&s);
}

static void test_dtls_idle_timeout(void **state)
{
    (void)state;
    srv s;
    cli c;
    cy_dtls_options o = {.idle_ms = 60000};
    srv_open(&s, &o);
    cli_open(&c, &s, "127.0.0.1", 0, "dev-1", "secret-1");
    cli *cs[1] = {&c};
    handshake(&s, &c);
    g_skew += 30000;
    cli_write(&c, "still here");
    WAIT_FOR(&s, cs, 1, s.datas == 1);
    g_skew += 59000; /* 89 s after the handshake, 59 s after the data */
    pump(&s, cs, 1);
    assert_int_equal(s.downs, 0);
    g_skew += 1000;
    WAIT_FOR(&s, cs, 1, s.downs == 1 && c.closed);
    assert_string_equal(s.down_why, "idle");
    assert_string_equal(s.down_id, "dev-1");
    assert_int_equal(st(&s)->peers, 0);
    cli_close(&c);
    srv_close(&s);
}

static void test_dtls_kick(void **state)
{
    (void)state;
    srv s;
    cli a, b;
    srv_open(&s, NULL);
    cli_open(&a, &s, "127.0.0.1", 0, "dev-1", "secret-1");
    cli_open(&b, &s, "127.0.0.1", 0, "dev-2", "secret-2");
    handshake(&s, &a);
    handshake(&s, &b);
    cli *cs[2] = {&a, &b};
    cy_dtls_kick(s.t, "nobody");
    cy_dtls_kick(s.t, "");
    assert_int_equal(s.downs, 0);
    cy_dtls_kick(s.t, "dev-1");
    assert_int_equal(s.downs, 1);
    assert_string_equal(s.down_id, "dev-1");
    assert_string_equal(s.down_why, "kicked");
    WAIT_FOR(&s, cs, 2, a.closed);
    assert_false(b.closed);
    assert_int_equal(st(&s)->peers, 1);
    assert_int_equal(st(&s)->established, 1);
    cli_close(&a);
    cli_close(&b);
    srv_close(&s);
}

static void test_dtls_kick_from_data_hook(void **state)
{
    (void)state;
    srv s;
    cli c;
    srv_open(&s, NULL);
    s.kick_on = "bye";
    cli_open(&c, &s, "127.0.0.1", 0, "dev-1", "secret-1");
    cli *cs[1] = {&c};
    handshake(&s, &c);
    /* Two records in flight: the peer is closed by the first one's hook,
     * the second must not reach a freed peer. */
    cli_write(&c, "bye");
    cli_write(&c, "more");
    WAIT_FOR(&s, cs, 1, s.downs == 1 && c.closed);
    assert_int_equal(s.kick_rc_down, 1);
    assert_string_equal(s.down_why, "kicked");
    assert_int_equal(st(&s)->peers, 0);
    cli_close(&c);
    srv_close(&s);
}

static void test_dtls_close_all(void **state)
{
    (void)state;
    srv s;
    cli a, b, h;
    srv_open(&s, NULL);
    cli_open(&a, &s, "127.0.0.1", 0, "dev-1", "secret-1");
    cli_open(&b, &s, "127.0.0.2", 0, "dev-2", "secret-2");
    handshake(&s, &a);
    handshake(&s, &b);
    /* and one stuck mid-handshake (its Finished never arrives) */
    cli_open(&h, &s, "127.0.0.1", 0, "dev-1", "wrong");
    cli *hs[1] = {&h};
    WAIT_FOR(&s, hs, 1, s.psk_calls >= 3);
    assert_int_equal(st(&s)->peers, 3);
    cy_dtls_close_all(s.t);
    assert_int_equal(s.downs, 2);
    assert_int_equal(st(&s)->peers, 0);
    assert_int_equal(st(&s)->established, 0);
    cli *cs[2] = {&a, &b};
    WAIT_FOR(&s, cs, 2, a.closed && b.closed);
    cli_close(&a);
    cli_close(&b);
    cli_close(&h);
    srv_close(&s);
}

static void test_dtls_restarted_device(void **state)
{
    (void)state;
    srv s;
    cli a, a2;
    srv_open(&s, NULL);
    cli_open(&a, &s, "127.0.0.1", 0, "dev-1", "secret-1");
    handshake(&s, &a);
    uint16_t port = ntohs(a.addr.sin_port);
    cli_close(&a); /* the device forgets its session... */
    cli_open(&a2, &s, "127.0.0.1", port, "dev-1", "secret-1"); /* ...and comes back */
    handshake(&s, &a2);
    assert_int_equal(s.downs, 1);
    assert_string_equal(s.down_why, "new handshake");
    assert_int_equal(st(&s)->peers, 1);
    assert_int_equal(st(&s)->established, 1);
    assert_int_equal(st(&s)->cookies_sent, 2);
    cli *cs[1] = {&a2};
    cli_write(&a2, "again");
    WAIT_FOR(&s, cs, 1, s.datas == 1);
    cli_close(&a2);
    srv_close(&s);
}

static void test_dtls_new_errors(void **state)
{
    (void)state;
    cy_dtls *t = (cy_dtls *)1;
    cy_dtls_hooks h = {.psk = h_psk, .send = h_send};
    assert_int_equal(cy_dtls_new(NULL, NULL, &t), CY_EINVAL);
    assert_null(t);
    cy_dtls_hooks nosend = {.psk = h_psk};
    assert_int_equal(cy_dtls_new(NULL, &nosend, &t), CY_EINVAL);
    cy_dtls_options small = {.mtu = 200};
    assert_int_equal(cy_dtls_new(&small, &h, &t), CY_EINVAL);
    cy_alloc_fail_after(0);
    assert_int_equal(cy_dtls_new(NULL, &h, &t), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    assert_null(t);
    assert_int_equal(cy_dtls_new(NULL, &h, &t), 0);
    /* calls on an idle server, and the NULL-safe ones */
    cy_dtls_tick(t, 1);
    cy_dtls_close_all(t);
    cy_dtls_kick(t, "x");
    assert_int_equal(cy_dtls_get_stats(t)->peers, 0);
    cy_dtls_free(t);
    cy_dtls_free(NULL);
    cy_dtls_tick(NULL, 0);
    cy_dtls_input(NULL, NULL, 0, NULL, 0, 0);
}

/* Debian's libcoap client: a GET over coaps with a PSK; the data hook
 * answers 2.05, so the client exits 0. */
static void test_dtls_interop_coap_client_openssl(void **state)
{
    (void)state;
    const char *bin = "/usr/bin/coap-client-openssl";
    if (access(bin, X_OK) != 0) skip();
    srv s;
    srv_open(&s, NULL);
    s.answer_coap = true;
    char uri[64];
    snprintf(uri, sizeof(uri), "coaps://127.0.0.1:%u/x", ntohs(s.addr.sin_port));
    char log[] = "/tmp/test_coap_dtls.XXXXXX";
    int lfd = mkstemp(log);
    assert_true(lfd >= 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(lfd, 1);
        dup2(lfd, 2);
        execl(bin, bin, "-m", "get", "-u", "dev-1", "-k", "secret-1", "-B", "3", uri, (char *)NULL);
        _exit(127);
    }
    int status = -1;
    bool exited = false;
    int64_t dl = cy_mono_ms() + 10000;
    while (!exited && cy_mono_ms() < dl) {
        pump(&s, NULL, 0);
        exited = waitpid(pid, &status, WNOHANG) == pid;
    }
    if (!exited) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    if (!exited || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || s.ups != 1) {
        char buf[2048];
        ssize_t n = pread(lfd, buf, sizeof(buf) - 1, 0);
        buf[n > 0 ? n : 0] = '\0';
        print_message("coap-client output:\n%s\n", buf);
    }
    close(lfd);
    unlink(log);
    assert_true(exited);
    assert_int_equal(s.ups, 1);
    assert_string_equal(s.up_id, "dev-1");
    assert_true(s.datas >= 1);
    assert_int_equal(s.data[0] & 0xf0, 0x40); /* a CoAP CON request */
    assert_int_equal(s.data[1], 0x01);        /* GET */
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    srv_close(&s);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("CY_TEST_DEBUG")) cy_log_set_level(CY_LOG_DEBUG);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtls_handshake_and_data),
        cmocka_unit_test(test_dtls_wrong_psk),
        cmocka_unit_test(test_dtls_unknown_identity),
        cmocka_unit_test(test_dtls_garbage_dropped),
        cmocka_unit_test(test_dtls_hello_without_cookie_makes_no_state),
        cmocka_unit_test(test_dtls_server_retransmits),
        cmocka_unit_test(test_dtls_max_peers),
        cmocka_unit_test(test_dtls_max_per_ip),
        cmocka_unit_test(test_dtls_handshake_rate),
        cmocka_unit_test(test_dtls_idle_timeout),
        cmocka_unit_test(test_dtls_kick),
        cmocka_unit_test(test_dtls_kick_from_data_hook),
        cmocka_unit_test(test_dtls_close_all),
        cmocka_unit_test(test_dtls_restarted_device),
        cmocka_unit_test(test_dtls_new_errors),
        cmocka_unit_test(test_dtls_interop_coap_client_openssl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
