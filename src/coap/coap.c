/* coap: the front of the CoAP transport (coap.h): sockets, which shard a
 * datagram is for, the DTLS terminator, frames between shards, output.
 *
 * Which shard (the owner) a datagram is for:
 *   - a plain request names its device: Uri-Query id=<device id>; the owner
 *     is cy_shard_of(id). The address is remembered (addr_owner), so that
 *     the device's pings (empty CON), which name nothing, reach it too; an
 *     unknown one is answered RST here, which keeps the NAT binding alive.
 *   - a plain ACK or RST answers one of our confirmable messages, whose id
 *     we chose as k * shards + owner (coap_mid_for); a response to one of
 *     our requests carries our token, whose first byte is the owner.
 *   - over DTLS every record of a session comes from one address to one
 *     shard (SO_REUSEPORT keeps it there), whose terminator knows the
 *     device from the PSK identity.
 * A datagram for another shard goes to it as a CY_FRAME_COAP_IN frame; a
 * datagram for a shard that is not ready gets 5.03 from here at once (a
 * hung shard makes its own devices fail fast and nobody else's).
 *
 * CY_FRAME_COAP_IN body: via (u8), term (u8), address length (u8) and
 * bytes, device id length (u8) and bytes, then the datagram (plaintext).
 * CY_FRAME_COAP_OUT body: via, term and the address as above (put_addr_head),
 * then the plaintext datagram for the terminator to encrypt and send.
 *
 * Output records (c->out), sent by cy_coap_flush after the commit: via
 * (u8), term (u8), address length (u8) and bytes, length (u16), datagram.
 */
#define _GNU_SOURCE /* recvmmsg */
#include "coap/coap_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* Addresses remembered for routing plain pings; the map is emptied when full. */
#define ADDR_OWNER_MAX 65536

bool coap_addr_eq(const coap_addr *a, const coap_addr *b)
{
    if (a->u.sa.sa_family != b->u.sa.sa_family) return false;
    if (a->u.sa.sa_family == AF_INET)
        return a->u.in4.sin_port == b->u.in4.sin_port &&
               a->u.in4.sin_addr.s_addr == b->u.in4.sin_addr.s_addr;
    return a->u.in6.sin6_port == b->u.in6.sin6_port &&
           memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, 16) == 0;
}

const char *coap_addr_text(const coap_addr *a, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (a->u.sa.sa_family == AF_INET) {
        inet_ntop(AF_INET, &a->u.in4.sin_addr, host, sizeof(host));
        snprintf(buf, len, "%s:%u", host, ntohs(a->u.in4.sin_port));
    } else {
        inet_ntop(AF_INET6, &a->u.in6.sin6_addr, host, sizeof(host));
        snprintf(buf, len, "[%s]:%u", host, ntohs(a->u.in6.sin6_port));
    }
    return buf;
}

/* The address as compact key bytes: family, port, address. */
size_t coap_addr_key(const coap_addr *a, uint8_t key[19])
{
    if (a->u.sa.sa_family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, &a->u.in4.sin_port, 2);
        memcpy(key + 3, &a->u.in4.sin_addr, 4);
        return 7;
    }
    key[0] = 6;
    memcpy(key + 1, &a->u.in6.sin6_port, 2);
    memcpy(key + 3, &a->u.in6.sin6_addr, 16);
    return 19;
}

static bool addr_from(coap_addr *a, const struct sockaddr *sa, socklen_t len)
{
    memset(a, 0, sizeof(*a));
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        memcpy(&a->u.in4, sa, sizeof(struct sockaddr_in));
        a->len = sizeof(struct sockaddr_in);
        return true;
    }
    if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        memcpy(&a->u.in6, sa, sizeof(struct sockaddr_in6));
        a->len = sizeof(struct sockaddr_in6);
        return true;
    }
    return false;
}

uint32_t coap_rand32(cy_coap *c)
{
    uint64_t x = c->rng ? c->rng : 0x9e3779b97f4a7c15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return (uint32_t)((x * 0x2545f4914f6cdd1dull) >> 32);
}

/* ---- the address -> owner memory (plain pings) ---- */

typedef struct addr_entry {
    uint8_t key[19];
    uint8_t klen;
    uint8_t owner;
} addr_entry;

static void free_entry(void *ctx, void *v)
{
    (void)ctx;
    cy_free(v);
}

static void addr_forget_all(cy_coap *c)
{
    cy_map_each(&c->addr_owner, free_entry, NULL);
    cy_map_fini(&c->addr_owner);
    cy_map_init(&c->addr_owner);
}

static void addr_learn(cy_coap *c, const coap_addr *a, unsigned owner)
{
    if (c->nshards == 1) return; /* every ping is ours */
    uint8_t key[19];
    size_t kl = coap_addr_key(a, key);
    addr_entry *e = cy_map_get(&c->addr_owner, key, kl);
    if (e) {
        e->owner = (uint8_t)owner;
        return;
    }
    if (c->addr_owner.count >= ADDR_OWNER_MAX) addr_forget_all(c);
    e = cy_malloc(sizeof(*e));
    if (!e) return;
    memcpy(e->key, key, kl);
    e->klen = (uint8_t)kl;
    e->owner = (uint8_t)owner;
    if (cy_map_put(&c->addr_owner, e->key, kl, e)) cy_free(e);
}

static int addr_owner(const cy_coap *c, const coap_addr *a)
{
    if (c->nshards == 1) return 0;
    uint8_t key[19];
    size_t kl = coap_addr_key(a, key);
    addr_entry *e = cy_map_get(&c->addr_owner, key, kl);
    return e ? e->owner : -1;
}

/* ---- output ---- */

/* The head shared by output records and COAP_IN frames: via, term, the
 * address's length and bytes. Returns its length. */
#define ADDR_HEAD_MAX (3 + sizeof(((coap_addr *)0)->u))
static size_t put_addr_head(uint8_t *head, uint8_t via, uint8_t term, const coap_addr *a)
{
    head[0] = via;
    head[1] = term;
    head[2] = (uint8_t)a->len;
    memcpy(head + 3, &a->u, a->len);
    return 3 + (size_t)a->len;
}

/* Read what put_addr_head wrote. false: too short or a bad address. */
static bool read_addr_head(cy_reader *r, uint8_t *via, uint8_t *term, coap_addr *a)
{
    *via = (uint8_t)cy_reader_be(r, 1);
    *term = (uint8_t)cy_reader_be(r, 1);
    uint8_t alen = (uint8_t)cy_reader_be(r, 1);
    if (r->bad || alen > sizeof(a->u)) return false;
    const uint8_t *ab = cy_reader_take(r, alen);
    if (r->bad || !ab) return false;
    memset(a, 0, sizeof(*a));
    a->len = alen;
    memcpy(&a->u, ab, alen);
    return true;
}

/* A COAP_IN frame's head: the address head, then the device id. */
#define IN_HEAD_MAX (ADDR_HEAD_MAX + 1 + 255)
static size_t put_in_head(uint8_t *head, uint8_t via, uint8_t term, const coap_addr *a,
                          const char *id, size_t id_len)
{
    size_t h = put_addr_head(head, via, term, a);
    head[h++] = (uint8_t)id_len;
    if (id_len) memcpy(head + h, id, id_len);
    return h + id_len;
}

void coap_output(cy_coap *c, uint8_t via, uint8_t term, const coap_addr *a, const uint8_t *p,
                 size_t len)
{
    if (len > 65535) return;
    uint8_t head[ADDR_HEAD_MAX];
    size_t h = put_addr_head(head, via, term, a);
    if (cy_buf_append(&c->out, head, h) || cy_buf_put_u16(&c->out, (uint16_t)len) ||
        cy_buf_append(&c->out, p, len))
        c->stats->coap_dropped++; /* out of memory: lost like a datagram */
}

/* Plain datagrams are sent in batches, one sendmmsg for up to COAP_BATCH. */
typedef struct plain_batch {
    struct mmsghdr msgs[COAP_BATCH];
    struct iovec iov[COAP_BATCH];
    coap_addr addr[COAP_BATCH];
    unsigned n;
} plain_batch;

static void plain_send_all(cy_coap *c, plain_batch *b)
{
    unsigned done = 0;
    while (done < b->n && c->udp_fd >= 0) {
        int n = sendmmsg(c->udp_fd, b->msgs + done, b->n - done, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { /* a full socket buffer: the first is lost like any datagram */
            c->stats->coap_dropped++;
            done++;
            continue;
        }
        done += (unsigned)n;
    }
    b->n = 0;
}

static void send_plain(cy_coap *c, plain_batch *b, const coap_addr *a, const uint8_t *p, size_t len)
{
    unsigned i = b->n++;
    b->addr[i] = *a;
    b->iov[i].iov_base = (void *)p; /* borrowed from c->out until plain_send_all */
    b->iov[i].iov_len = len;
    memset(&b->msgs[i], 0, sizeof(b->msgs[i]));
    b->msgs[i].msg_hdr.msg_name = &b->addr[i].u;
    b->msgs[i].msg_hdr.msg_namelen = b->addr[i].len;
    b->msgs[i].msg_hdr.msg_iov = &b->iov[i];
    b->msgs[i].msg_hdr.msg_iovlen = 1;
    if (b->n == COAP_BATCH) plain_send_all(c, b);
}

static void send_frame_out(cy_coap *c, unsigned term, const coap_addr *a, const uint8_t *p,
                           size_t len)
{
    uint8_t head[ADDR_HEAD_MAX];
    size_t h = put_addr_head(head, COAP_VIA_DTLS, (uint8_t)term, a);
    if (cy_cluster_send(c->cluster, term, CY_FRAME_COAP_OUT, head, h, p, len))
        c->stats->coap_dropped++;
}

void cy_coap_flush(cy_coap *c)
{
    plain_batch batch;
    batch.n = 0;
    cy_reader r = cy_reader_of(cy_buf_head(&c->out), cy_buf_size(&c->out));
    while (cy_reader_left(&r)) {
        uint8_t via, term;
        coap_addr a;
        if (!read_addr_head(&r, &via, &term, &a)) break;
        size_t len = (size_t)cy_reader_be(&r, 2);
        const uint8_t *p = cy_reader_take(&r, len);
        if (r.bad) break;
        if (via == COAP_VIA_PLAIN)
            send_plain(c, &batch, &a, p, len);
        else if (term == c->self && c->dtls)
            (void)cy_dtls_send(c->dtls, &a.u.sa, a.len, p, len);
        else if (term != c->self)
            send_frame_out(c, term, &a, p, len);
    }
    plain_send_all(c, &batch);
    cy_buf_reset(&c->out);
    if (cy_buf_size(&c->out) == 0) cy_buf_shrink(&c->out);
}

bool cy_coap_dirty(const cy_coap *c)
{
    return cy_buf_size(&c->out) > 0;
}

/* ---- answers from the front ---- */

void coap_answer_error(cy_coap *c, uint8_t via, uint8_t term, const coap_addr *a,
                       const cy_coap_msg *m, uint8_t code, const char *diag)
{
    if (m->type != CY_COAP_CON && m->type != CY_COAP_NON) return;
    uint8_t buf[256];
    cy_coap_writer w;
    uint16_t mid = m->type == CY_COAP_CON ? m->mid : coap_mid_for(c, c->progress);
    cy_coap_w_init(&w, buf, sizeof(buf), m->type == CY_COAP_CON ? CY_COAP_ACK : CY_COAP_NON, code,
                   mid, m->token, m->tkl);
    if (code == CY_COAP_UNAVAILABLE) cy_coap_w_opt_uint(&w, CY_COAP_OPT_MAX_AGE, 5);
    if (code == CY_COAP_TOO_LARGE)
        cy_coap_w_opt_uint(&w, CY_COAP_OPT_SIZE1, c->cfg->coap_max_message);
    /* A plain source may be spoofed: the answer, diagnostic included, stays
     * within 3 times the request (RFC 9175 2.4's bound on amplification). */
    size_t dlen = diag ? strnlen(diag, 128) : 0;
    if (via == COAP_VIA_PLAIN && w.len + 1 + dlen > 3 * c->req_len) dlen = 0;
    if (dlen) cy_coap_w_payload(&w, diag, dlen);
    size_t len;
    if (cy_coap_w_end(&w, &len) == 0) coap_output(c, via, term, a, buf, len);
}

static void answer_rst(cy_coap *c, uint8_t via, uint8_t term, const coap_addr *a, uint16_t mid)
{
    uint8_t b[CY_COAP_HEADER];
    coap_output(c, via, term, a, b, cy_coap_empty(b, CY_COAP_RST, mid));
}

/* ---- dispatch ---- */

/* Send a datagram to owner over the bus (or answer 5.03 if it cannot take it). */
static void forward(cy_coap *c, unsigned owner, uint8_t via, uint8_t term, const coap_addr *a,
                    const char *id, size_t id_len, const cy_coap_msg *m, const uint8_t *raw,
                    size_t len)
{
    char why[96];
    if (!cy_cluster_shard_ready(c->cluster, owner, why, sizeof(why))) {
        c->stats->coap_dropped++;
        if (m && CY_COAP_CLASS(m->code) == 0 && m->code != CY_COAP_EMPTY)
            coap_answer_error(c, via, term, a, m, CY_COAP_UNAVAILABLE,
                              "the device's shard is unavailable");
        return;
    }
    uint8_t head[IN_HEAD_MAX];
    size_t h = put_in_head(head, via, term, a, id, id_len);
    if (cy_cluster_send(c->cluster, owner, CY_FRAME_COAP_IN, head, h, raw, len))
        c->stats->coap_dropped++;
    c->progress++;
}

/* A plain datagram (decoded as m) read here from a. */
static void plain_input(cy_coap *c, const coap_addr *a, const uint8_t *raw, size_t len)
{
    c->req_len = len;
    cy_coap_msg m;
    int rc = cy_coap_decode(raw, len, &m);
    if (rc == CY_EINVAL) { /* not CoAP: silently ignored (RFC 7252 3) */
        c->stats->coap_dropped++;
        return;
    }
    if (rc == CY_EPROTO) { /* a format error: a CON is rejected, the rest ignored */
        c->stats->coap_dropped++;
        if (m.type == CY_COAP_CON) answer_rst(c, COAP_VIA_PLAIN, 0, a, m.mid);
        return;
    }
    if (rc == CY_EMSGSIZE) {
        c->stats->coap_dropped++;
        if (CY_COAP_CLASS(m.code) == 0 && m.code != CY_COAP_EMPTY)
            coap_answer_error(c, COAP_VIA_PLAIN, 0, a, &m, CY_COAP_BAD_OPTION,
                              "too many or too long options");
        else if (m.type == CY_COAP_CON)
            answer_rst(c, COAP_VIA_PLAIN, 0, a, m.mid);
        return;
    }
    uint8_t cls = CY_COAP_CLASS(m.code);
    int owner = -1;
    const uint8_t *id = NULL;
    size_t id_len = 0;
    if (m.code == CY_COAP_EMPTY) {
        if (m.type == CY_COAP_ACK || m.type == CY_COAP_RST) {
            owner = (int)(m.mid % c->nshards); /* our ids: k * shards + owner */
        } else if (m.type == CY_COAP_CON) {    /* a ping */
            owner = addr_owner(c, a);
            if (owner < 0) {
                answer_rst(c, COAP_VIA_PLAIN, 0, a, m.mid);
                return;
            }
        } else {
            c->stats->coap_dropped++; /* an empty NON: meaningless */
            return;
        }
    } else if (cls == 0) { /* a request names its device */
        if (!c->cfg->coap_insecure && !c->cfg->allow_anonymous) {
            c->stats->coap_dropped++;
            coap_answer_error(c, COAP_VIA_PLAIN, 0, a, &m, CY_COAP_UNAUTHORIZED,
                              "plain CoAP is off here: use CoAP over DTLS (coaps)");
            return;
        }
        if (cy_coap_query(&m, "id", &id, &id_len) || id_len == 0 || id_len > CY_MAX_CLIENT_ID) {
            c->stats->coap_dropped++;
            coap_answer_error(c, COAP_VIA_PLAIN, 0, a, &m, CY_COAP_BAD_REQUEST,
                              "name the device: ?id=<device id>");
            return;
        }
        owner = (int)cy_shard_of((const char *)id, id_len, c->nshards);
        addr_learn(c, a, (unsigned)owner);
    } else if (cls >= 2 && cls <= 5) { /* a response to one of our requests */
        owner = m.tkl ? (int)(m.token[0] % c->nshards) : -1;
        if (owner < 0) {
            c->stats->coap_dropped++;
            if (m.type == CY_COAP_CON) answer_rst(c, COAP_VIA_PLAIN, 0, a, m.mid);
            return;
        }
    } else { /* a reserved class */
        c->stats->coap_dropped++;
        if (m.type == CY_COAP_CON) answer_rst(c, COAP_VIA_PLAIN, 0, a, m.mid);
        return;
    }
    if ((unsigned)owner == c->self) {
        c->stats->coap_received++;
        coap_ep_input(c, (const char *)id, id_len, COAP_VIA_PLAIN, 0, a, &m, raw, len);
        return;
    }
    forward(c, (unsigned)owner, COAP_VIA_PLAIN, 0, a, (const char *)id, id_len, &m, raw, len);
}

/* ---- the DTLS terminator's hooks ---- */

/* A DTLS login's limits (core/cy_limit.h): an address, or a device for
 * the addresses that failed, locked out gets no key, so its handshake
 * fails, even with the right key. A slow one is not held: a handshake
 * costs the client a cookie round trip and is rate-limited per shard
 * already (coaps_handshake_rate). An unknown identity is a failed login
 * of its address here; a wrong key is one of the address and the device
 * when its handshake fails (dtls_failed). */
/* One line per kind of event per address per 10 s (a stranger repeats
 * these at will). */
static void auth_log(cy_coap *c, char kind, const struct sockaddr *addr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void auth_log(cy_coap *c, char kind, const struct sockaddr *addr, const char *fmt, ...)
{
    if (!cy_log_enabled(CY_LOG_INFO)) return;
    char a[64], key[72], more[CY_LOGRL_MORE], text[256];
    cy_limit_addr_text(addr, a, sizeof(a));
    snprintf(key, sizeof(key), "%c %s", kind, a);
    if (!cy_logrl_line(&c->auth_log, key, more)) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    cy_log(CY_LOG_INFO, NULL, "coaps: from %s: %s%s", a, text, more);
}

static void auth_failed(cy_coap *c, const struct sockaddr *addr, const char *identity, bool exists,
                        const char *why)
{
    c->stats->auth_failures++;
    unsigned bits =
        cy_limit_auth_failed(c->limit, addr, identity, strlen(identity), exists, cy_mono_ms());
    auth_log(c, 'f', addr, "handshake for device '%.64s' failed: %s", identity, why);
    if (bits & CY_LIMIT_ADDR_LOCKED_NOW)
        auth_log(c, 'l', addr, "address locked out for %u s: %u failed logins within %u s",
                 c->cfg->auth_lockout, c->cfg->auth_fail_lockout_after, c->cfg->auth_fail_window);
    if (bits & CY_LIMIT_ID_LOCKED_NOW)
        auth_log(c, 'd', addr,
                 "device '%.64s' locked out for %u s for the addresses that failed: %u failed "
                 "logins within %u s",
                 identity, c->cfg->auth_lockout, c->cfg->auth_fail_lockout_after,
                 c->cfg->auth_fail_window);
}

static int dtls_psk(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity,
                    uint8_t *key, size_t max)
{
    cy_coap *c = ctx;
    (void)alen;
    size_t n = strlen(identity);
    int64_t retry = 0;
    if (cy_limit_auth_check(c->limit, addr, identity, n, true, cy_mono_ms(), &retry) ==
        CY_LIMIT_LOCKED) {
        c->stats->auth_locked++;
        auth_log(c, 'r', addr,
                 "handshake for device '%.64s' refused: locked out after repeated "
                 "failed logins (%lld s left)",
                 identity, (long long)((retry + 999) / 1000));
        return CY_EACCES;
    }
    int rc = cy_registry_device_psk(c->registry, identity, n, key, max);
    if (rc == CY_ENOENT) auth_failed(c, addr, identity, false, "unknown device");
    return rc;
}

static void dtls_failed(void *ctx, const struct sockaddr *addr, socklen_t alen,
                        const char *identity)
{
    (void)alen;
    auth_failed(ctx, addr, identity, true, "wrong key, or the handshake timed out");
}

static void dtls_send(void *ctx, const struct sockaddr *addr, socklen_t alen, const uint8_t *p,
                      size_t len)
{
    cy_coap *c = ctx;
    ssize_t n;
    do
        n = sendto(c->dtls_fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL, addr, alen);
    while (n < 0 && errno == EINTR);
    if (n < 0) c->stats->coap_dropped++;
}

static void dtls_up(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity)
{
    cy_coap *c = ctx;
    c->stats->coaps_handshakes++;
    if (cy_log_enabled(CY_LOG_DEBUG)) {
        coap_addr a;
        char t[64];
        if (addr_from(&a, addr, alen))
            cy_debug(identity, "DTLS session from %s", coap_addr_text(&a, t, sizeof(t)));
    }
}

static void dtls_data(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity,
                      const uint8_t *p, size_t len)
{
    cy_coap *c = ctx;
    coap_addr a;
    if (!addr_from(&a, addr, alen)) return;
    size_t id_len = strlen(identity);
    unsigned owner = cy_shard_of(identity, id_len, c->nshards);
    cy_coap_msg m;
    c->req_len = len;
    int rc = cy_coap_decode(p, len, &m);
    if (rc == 0 && len > c->cfg->coap_max_message) { /* over the limit, as plain CoAP is */
        c->stats->coap_dropped++;
        if (CY_COAP_CLASS(m.code) == 0 && m.code != CY_COAP_EMPTY)
            coap_answer_error(c, COAP_VIA_DTLS, (uint8_t)c->self, &a, &m, CY_COAP_TOO_LARGE, NULL);
        return;
    }
    if (rc == CY_EINVAL) {
        c->stats->coap_dropped++;
        return;
    }
    if (rc == CY_EPROTO) {
        c->stats->coap_dropped++;
        if (m.type == CY_COAP_CON) answer_rst(c, COAP_VIA_DTLS, (uint8_t)c->self, &a, m.mid);
        return;
    }
    if (rc == CY_EMSGSIZE) {
        c->stats->coap_dropped++;
        if (CY_COAP_CLASS(m.code) == 0 && m.code != CY_COAP_EMPTY)
            coap_answer_error(c, COAP_VIA_DTLS, (uint8_t)c->self, &a, &m, CY_COAP_BAD_OPTION,
                              "too many or too long options");
        return;
    }
    if (owner == c->self) {
        c->stats->coap_received++;
        coap_ep_input(c, identity, id_len, COAP_VIA_DTLS, (uint8_t)c->self, &a, &m, p, len);
        return;
    }
    forward(c, owner, COAP_VIA_DTLS, (uint8_t)c->self, &a, identity, id_len, &m, p, len);
}

static void dtls_down(void *ctx, const struct sockaddr *addr, socklen_t alen, const char *identity,
                      const char *why)
{
    cy_coap *c = ctx;
    coap_addr a;
    if (!addr_from(&a, addr, alen)) return;
    cy_debug(identity, "DTLS session ended: %s", why);
    size_t id_len = strlen(identity);
    unsigned owner = cy_shard_of(identity, id_len, c->nshards);
    if (owner == c->self) {
        coap_ep_closed(c, identity, id_len, (uint8_t)c->self, &a);
        return;
    }
    char whyb[8];
    if (!cy_cluster_shard_ready(c->cluster, owner, whyb, sizeof(whyb))) return;
    uint8_t head[IN_HEAD_MAX];
    size_t h = put_in_head(head, COAP_VIA_CLOSED, (uint8_t)c->self, &a, identity, id_len);
    (void)cy_cluster_send(c->cluster, owner, CY_FRAME_COAP_IN, head, h, NULL, 0);
}

/* ---- frames ---- */

void cy_coap_on_frame(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len)
{
    cy_coap *c = ctx;
    if (c->stopping) return;
    cy_reader r = cy_reader_of(body, len);
    c->progress++;
    uint8_t via, term;
    coap_addr a;
    if (type == CY_FRAME_COAP_OUT) {
        if (!read_addr_head(&r, &via, &term, &a) || !c->dtls) return;
        size_t n = cy_reader_left(&r);
        if (cy_dtls_send(c->dtls, &a.u.sa, a.len, r.p, n)) c->stats->coap_dropped++;
        return;
    }
    if (type == CY_FRAME_COAP_KICK) {
        char id[CY_DTLS_IDENTITY_MAX + 1];
        if (len == 0 || len > CY_DTLS_IDENTITY_MAX || !c->dtls) return;
        memcpy(id, body, len);
        id[len] = '\0';
        cy_dtls_kick(c->dtls, id);
        return;
    }
    if (type != CY_FRAME_COAP_IN || !read_addr_head(&r, &via, &term, &a)) return;
    uint8_t id_len = (uint8_t)cy_reader_be(&r, 1);
    const uint8_t *id = cy_reader_take(&r, id_len);
    if (r.bad || term >= c->nshards) return;
    if (via == COAP_VIA_CLOSED) {
        coap_ep_closed(c, (const char *)id, id_len, term, &a);
        return;
    }
    size_t n = cy_reader_left(&r);
    cy_coap_msg m;
    if (cy_coap_decode(r.p, n, &m)) return; /* the sender decoded it already */
    c->req_len = n;
    c->stats->coap_received++;
    (void)from;
    coap_ep_input(c, (const char *)id, id_len, via, term, &a, &m, r.p, n);
}

/* ---- reading ---- */

/* Read what the socket holds, a batch at a time (at most a few batches per
 * wake-up, so one busy socket does not starve the loop). */
static void read_socket(cy_coap *c, int fd, bool dtls)
{
    struct mmsghdr msgs[COAP_BATCH];
    struct iovec iov[COAP_BATCH];
    struct sockaddr_storage from[COAP_BATCH];
    for (int round = 0; round < 4; round++) {
        for (unsigned i = 0; i < COAP_BATCH; i++) {
            iov[i].iov_base = c->rbuf + i * c->rbuf_each;
            /* A plain datagram over coap_max_message is truncated (and
             * answered 4.13); a DTLS record may be larger than what it
             * holds, so it is read whole and its plaintext measured. */
            iov[i].iov_len = dtls ? c->rbuf_each : c->cfg->coap_max_message;
            memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
        }
        int n = recvmmsg(fd, msgs, COAP_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) return;
        int64_t now = uv_now(c->loop);
        for (int i = 0; i < n; i++) {
            coap_addr a;
            c->progress++;
            if (!addr_from(&a, (struct sockaddr *)&from[i], msgs[i].msg_hdr.msg_namelen)) continue;
            const uint8_t *p = iov[i].iov_base;
            size_t len = msgs[i].msg_len;
            if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) { /* over what we take */
                c->stats->coap_dropped++;
                c->req_len = len;
                if (!dtls && len >= CY_COAP_HEADER && (p[0] >> 6) == 1 && ((p[0] >> 4) & 3) == 0 &&
                    (p[0] & 15) <= 8 && len >= CY_COAP_HEADER + (size_t)(p[0] & 15)) {
                    cy_coap_msg m;
                    memset(&m, 0, sizeof(m));
                    m.type = CY_COAP_CON;
                    m.mid = (uint16_t)(p[2] << 8 | p[3]);
                    m.tkl = p[0] & 15;
                    memcpy(m.token, p + 4, m.tkl);
                    coap_answer_error(c, COAP_VIA_PLAIN, 0, &a, &m, CY_COAP_TOO_LARGE, NULL);
                }
                continue;
            }
            if (dtls)
                cy_dtls_input(c->dtls, &a.u.sa, a.len, p, len, now);
            else
                plain_input(c, &a, p, len);
        }
        if (n < COAP_BATCH) return;
    }
}

static void on_udp(uv_poll_t *h, int status, int events)
{
    cy_coap *c = h->data;
    if (status < 0 || !(events & UV_READABLE) || c->stalled) return;
    read_socket(c, c->udp_fd, false);
}

static void on_dtls(uv_poll_t *h, int status, int events)
{
    cy_coap *c = h->data;
    if (status < 0 || !(events & UV_READABLE) || c->stalled) return;
    read_socket(c, c->dtls_fd, true);
}

/* ---- lifecycle ---- */

int cy_coap_new(const cy_coap_deps *deps, cy_coap **out)
{
    cy_coap *c = cy_calloc(1, sizeof(*c));
    if (!c) return CY_ENOMEM;
    c->loop = deps->loop;
    c->cfg = deps->cfg;
    c->registry = deps->registry;
    c->router = deps->router;
    c->cluster = deps->cluster;
    c->devices = deps->devices;
    c->space = deps->space;
    c->stats = deps->stats;
    c->limit = deps->limit;
    cy_logrl_init(&c->auth_log, 10000, 20);
    c->self = deps->self;
    c->nshards = deps->nshards ? deps->nshards : 1;
    c->udp_fd = c->dtls_fd = -1;
    cy_map_init(&c->addr_owner);
    cy_map_init(&c->eps);
    cy_map_init(&c->by_addr);
    cy_buf_init(&c->out);
    if (RAND_bytes(c->echo_key, sizeof(c->echo_key)) != 1 ||
        RAND_bytes((unsigned char *)&c->rng, sizeof(c->rng)) != 1) {
        cy_free(c);
        return CY_EIO;
    }
    *out = c;
    return 0;
}

static int open_fd(cy_coap *c, int fd, int *mine, uv_poll_t *poll)
{
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    if (d < 0) return -errno;
    int rc = uv_poll_init(c->loop, poll, d);
    if (rc) {
        close(d);
        return rc;
    }
    poll->data = c;
    *mine = d;
    return 0;
}

int cy_coap_open(cy_coap *c, int udp_fd, int dtls_fd)
{
    /* Room for the largest DTLS record (16 KiB of plaintext and its overhead). */
    size_t each = c->cfg->coap_max_message + 64;
    c->rbuf_each = each < 16384 + 256 ? 16384 + 256 : each;
    c->rbuf = cy_malloc(COAP_BATCH * c->rbuf_each);
    if (!c->rbuf) return CY_ENOMEM;
    int rc;
    if (udp_fd >= 0) {
        if ((rc = open_fd(c, udp_fd, &c->udp_fd, &c->udp_poll))) return rc;
        c->udp_polling = true;
    }
    if (dtls_fd >= 0) {
        cy_dtls_options o = {
            .max_peers = c->cfg->coaps_max_peers,
            .handshakes_per_sec = c->cfg->coaps_handshake_rate,
            .idle_ms = c->cfg->coap_idle_timeout * 1000u,
            .mtu =
                (uint16_t)(c->cfg->coap_max_message + 64 > 65000 ? 65000
                                                                 : c->cfg->coap_max_message + 64),
        };
        cy_dtls_hooks h = {dtls_psk, dtls_send, dtls_up, dtls_data, dtls_down, dtls_failed, c};
        if ((rc = cy_dtls_new(&o, &h, &c->dtls))) return rc;
        if ((rc = open_fd(c, dtls_fd, &c->dtls_fd, &c->dtls_poll))) return rc;
        c->dtls_polling = true;
    }
    return 0;
}

int cy_coap_accept(cy_coap *c)
{
    int rc = 0;
    c->accepting = true;
    if (c->udp_polling) rc = uv_poll_start(&c->udp_poll, UV_READABLE, on_udp);
    if (!rc && c->dtls_polling) rc = uv_poll_start(&c->dtls_poll, UV_READABLE, on_dtls);
    return rc;
}

void cy_coap_stall(cy_coap *c)
{
    c->stalled = true;
    if (c->udp_polling) uv_poll_stop(&c->udp_poll);
    if (c->dtls_polling) uv_poll_stop(&c->dtls_poll);
}

void cy_coap_stop(cy_coap *c)
{
    if (c->stopping) return;
    if (c->dtls) cy_dtls_close_all(c->dtls);
    coap_ep_free_all(c, true);
    c->stopping = true;
    if (c->udp_polling) uv_close((uv_handle_t *)&c->udp_poll, NULL);
    if (c->dtls_polling) uv_close((uv_handle_t *)&c->dtls_poll, NULL);
    c->udp_polling = c->dtls_polling = false;
}

void cy_coap_free(cy_coap *c)
{
    if (!c) return;
    coap_ep_free_all(c, false);
    cy_map_fini(&c->eps);
    cy_map_fini(&c->by_addr);
    addr_forget_all(c);
    cy_map_fini(&c->addr_owner);
    cy_dtls_free(c->dtls);
    if (c->udp_fd >= 0) close(c->udp_fd);
    if (c->dtls_fd >= 0) close(c->dtls_fd);
    cy_buf_fini(&c->out);
    cy_free(c->rbuf);
    cy_free(c);
}

void cy_coap_tick(cy_coap *c, int64_t now)
{
    if (c->stopping) return;
    coap_ep_tick(c, now);
    if (c->dtls) cy_dtls_tick(c->dtls, now);
}

void cy_coap_sweep(cy_coap *c, int64_t now)
{
    if (c->stopping) return;
    coap_ep_sweep(c, now);
    if (c->dtls) {
        const cy_dtls_stats *st = cy_dtls_get_stats(c->dtls);
        c->stats->coaps_handshake_failures = st->handshakes_failed + st->refused;
    }
}

void cy_coap_kick(cy_coap *c, const char *id)
{
    size_t len = strlen(id);
    if (!len || len > CY_DTLS_IDENTITY_MAX) return;
    if (c->dtls) cy_dtls_kick(c->dtls, id);
    for (unsigned j = 0; j < c->nshards; j++)
        if (j != c->self)
            (void)cy_cluster_send(c->cluster, j, CY_FRAME_COAP_KICK, id, len, NULL, 0);
}

uint32_t cy_coap_online(const cy_coap *c)
{
    return c->online;
}

uint64_t cy_coap_progress(const cy_coap *c)
{
    return c->progress;
}

uint64_t cy_coap_owed(const cy_coap *c, int64_t now)
{
    uint64_t owed = coap_ep_owed(c, now);
    /* Our own DTLS socket is read by us alone: datagrams left in it while
     * we do not read are ours. */
    int n = 0;
    if (c->dtls_fd >= 0 && c->accepting && !c->stopping && ioctl(c->dtls_fd, FIONREAD, &n) == 0 &&
        n > 0)
        owed++;
    /* The plain socket is everyone's: a datagram left in it is ours only
     * when no other shard reads it (one shard). With several, what a
     * stalled shard owes of it is the frames the readers forward to it,
     * which the supervisor counts as unacknowledged bus frames. */
    n = 0;
    if (c->nshards == 1 && c->udp_fd >= 0 && c->accepting && !c->stopping &&
        ioctl(c->udp_fd, FIONREAD, &n) == 0 && n > 0)
        owed++;
    return owed;
}
