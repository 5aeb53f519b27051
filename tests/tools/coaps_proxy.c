/* coaps_proxy: a test tool, a DTLS 1.2 PSK client that bridges a local
 * plain UDP port to a CoAP-over-DTLS server (cyan's coaps_listen), so a
 * plain CoAP device (tests/integration/coapdev.py) can act as a DTLS one.
 *
 *   coaps_proxy --listen 127.0.0.1:PORT --server 127.0.0.1:PORT
 *               --identity ID --key KEY [--timeout-ms N]
 *
 * It binds the local port (0: the kernel picks one), does the handshake
 * with the server (identity ID, key = the bytes of KEY), then prints one
 * line "ready <local port>" on stdout, or "failed <reason>" and exits 1 if
 * the handshake does not complete within --timeout-ms (default 10000).
 * Then every datagram from the first local peer goes to the server as one
 * record and every record from the server goes back to that peer, until
 * stdin closes or SIGTERM (it then sends close_notify and exits 0), or the
 * server ends the session (it prints "closed <reason>" and exits 0).
 * Single-threaded: one ppoll loop over stdin and the two sockets, with
 * SIGTERM unblocked only inside ppoll; DTLS timers by DTLSv1_handle_timeout.
 */
#define _GNU_SOURCE /* ppoll */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *g_identity, *g_key;
static volatile sig_atomic_t g_term;

static void on_term(int sig)
{
    (void)sig;
    g_term = 1;
}

static unsigned psk_cb(SSL *ssl, const char *hint, char *identity, unsigned max_identity,
                       unsigned char *psk, unsigned max_psk)
{
    (void)ssl;
    (void)hint;
    size_t il = strlen(g_identity), kl = strlen(g_key);
    if (il + 1 > max_identity || kl > max_psk) return 0;
    memcpy(identity, g_identity, il + 1);
    memcpy(psk, g_key, kl);
    return (unsigned)kl;
}

static int parse_addr(const char *text, struct sockaddr_in *sa)
{
    const char *colon = strrchr(text, ':');
    char host[64];
    if (!colon || (size_t)(colon - text) >= sizeof(host)) return -1;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = 0;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *ssl_reason(void)
{
    unsigned long e = ERR_get_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "no reason";
}

/* One ppoll over fds with the DTLS timer (or cap_ms) as the limit; SIGTERM
 * can interrupt it. Returns ppoll's result (0 on a timeout). */
static int wait_io(SSL *ssl, struct pollfd *fds, nfds_t n, int64_t cap_ms, const sigset_t *mask)
{
    struct timeval tv;
    int64_t ms = cap_ms;
    if (DTLSv1_get_timeout(ssl, &tv)) {
        int64_t t = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
        if (t < ms) ms = t;
    }
    if (ms < 0) ms = 0;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    int rc = ppoll(fds, n, &ts, mask);
    if (rc == 0) DTLSv1_handle_timeout(ssl);
    return rc;
}

/* Records from the server to the local peer, until OpenSSL wants more input.
 * Returns 0, or 1 (with *why) once the session has ended. */
static int pump_down(SSL *ssl, int lfd, const struct sockaddr_in *peer, bool have_peer,
                     const char **why)
{
    unsigned char buf[65536];
    for (;;) {
        int n = SSL_read(ssl, buf, sizeof(buf));
        if (n > 0) {
            if (have_peer)
                (void)sendto(lfd, buf, (size_t)n, 0, (const struct sockaddr *)peer, sizeof(*peer));
            continue;
        }
        int err = SSL_get_error(ssl, n);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return 0;
        if (err == SSL_ERROR_SYSCALL && errno == ECONNREFUSED) {
            ERR_clear_error(); /* an ICMP from an earlier datagram: not the end */
            continue;
        }
        *why = err == SSL_ERROR_ZERO_RETURN ? "close_notify" : ssl_reason();
        return 1;
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: coaps_proxy --listen HOST:PORT --server HOST:PORT --identity ID "
                    "--key KEY [--timeout-ms N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *listen_at = NULL, *server_at = NULL;
    long timeout_ms = 10000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--listen"))
            listen_at = argv[i + 1];
        else if (!strcmp(argv[i], "--server"))
            server_at = argv[i + 1];
        else if (!strcmp(argv[i], "--identity"))
            g_identity = argv[i + 1];
        else if (!strcmp(argv[i], "--key"))
            g_key = argv[i + 1];
        else if (!strcmp(argv[i], "--timeout-ms"))
            timeout_ms = atol(argv[i + 1]);
        else
            return usage();
    }
    struct sockaddr_in la, sa, peer;
    if (argc % 2 == 0 || !listen_at || !server_at || !g_identity || !g_key ||
        parse_addr(listen_at, &la) || parse_addr(server_at, &sa) || timeout_ms <= 0)
        return usage();

    sigset_t block, run_mask;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &run_mask);
    sigdelset(&run_mask, SIGTERM);
    struct sigaction act;
    memset(&act, 0, sizeof(act));
    act.sa_handler = on_term;
    sigaction(SIGTERM, &act, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    const char *why = NULL;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    int lfd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int sfd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    socklen_t alen = sizeof(la);
    if (lfd < 0 || sfd < 0 || bind(lfd, (struct sockaddr *)&la, sizeof(la)) ||
        getsockname(lfd, (struct sockaddr *)&la, &alen) ||
        connect(sfd, (struct sockaddr *)&sa, sizeof(sa))) {
        why = strerror(errno);
        goto out;
    }
    ctx = SSL_CTX_new(DTLS_client_method());
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, DTLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, DTLS1_2_VERSION) ||
        !SSL_CTX_set_cipher_list(ctx, "PSK-AES128-CCM8:PSK-AES128-GCM-SHA256:PSK-AES128-CCM:"
                                      "PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305") ||
        !(ssl = SSL_new(ctx))) {
        why = ssl_reason();
        goto out;
    }
    SSL_set_psk_client_callback(ssl, psk_cb);
    BIO *bio = BIO_new_dgram(sfd, BIO_NOCLOSE);
    if (!bio) {
        why = ssl_reason();
        goto out;
    }
    BIO_ctrl(bio, BIO_CTRL_DGRAM_SET_CONNECTED, 0, &sa);
    SSL_set_bio(ssl, bio, bio);

    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int n = SSL_connect(ssl);
        if (n == 1) break;
        int err = SSL_get_error(ssl, n);
        if (err == SSL_ERROR_SYSCALL && errno == ECONNREFUSED)
            ERR_clear_error();
        else if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
            why = ssl_reason();
            goto out;
        }
        int64_t left = deadline - now_ms();
        if (left <= 0 || g_term) {
            why = g_term ? "terminated" : "timeout";
            goto out;
        }
        struct pollfd pf = {sfd, POLLIN, 0};
        (void)wait_io(ssl, &pf, 1, left, &run_mask);
    }
    printf("ready %u\n", ntohs(la.sin_port));
    fflush(stdout);

    bool have_peer = false;
    unsigned char buf[65536];
    while (!g_term) {
        struct pollfd fds[3] = {{sfd, POLLIN, 0}, {lfd, POLLIN, 0}, {0, POLLIN, 0}};
        if (wait_io(ssl, fds, 3, 1000, &run_mask) < 0 && errno != EINTR) break;
        if ((fds[0].revents & POLLIN) && pump_down(ssl, lfd, &peer, have_peer, &why)) {
            printf("closed %s\n", why);
            fflush(stdout);
            rc = 0;
            why = NULL;
            goto out;
        }
        while (fds[1].revents & POLLIN) {
            struct sockaddr_in from;
            socklen_t fl = sizeof(from);
            ssize_t n = recvfrom(lfd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
            if (n < 0) break;
            if (!have_peer) {
                peer = from;
                have_peer = true;
            }
            if (from.sin_port == peer.sin_port && from.sin_addr.s_addr == peer.sin_addr.s_addr &&
                n > 0 && SSL_write(ssl, buf, (int)n) <= 0)
                ERR_clear_error(); /* e.g. over the record limit: lost like a datagram */
        }
        if (fds[2].revents & (POLLIN | POLLHUP)) {
            ssize_t n = read(0, buf, sizeof(buf));
            if (n <= 0) break;
        }
    }
    SSL_shutdown(ssl); /* close_notify */
    rc = 0;
out:
    if (why) {
        printf("failed %s\n", why);
        fflush(stdout);
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (lfd >= 0) close(lfd);
    if (sfd >= 0) close(sfd);
    return rc;
}
