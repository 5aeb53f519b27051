/* endpoint: a CoAP device as its owner shard sees it (coap_int.h).
 *
 * One endpoint per device heard here as its owner. It is the device's
 * cy_link while the device is online, that is while its address is fresh:
 * heard within coap_idle_timeout. Going online attaches the device's
 * session (persistent for coap_session_expiry, so QoS 1 messages wait for
 * a device that sleeps) and resends what was in flight; going offline
 * (idle, our retransmissions unanswered, its DTLS session closed, a
 * takeover or a deletion) detaches it.
 *
 * The device convention over CoAP (docs/device-protocol.md):
 *   POST /e/<name>      an event, devices/<id>/events/<name>: a CON is QoS 1,
 *                       answered 2.04 only after it is on disk; a NON is QoS 0
 *   POST /t/<topic>     a publish on any topic the device may use
 *   PUT  /d             its describe (JSON), kept retained
 *   POST /s/<filter>    subscribe (?qos=0|1, default 1); DELETE unsubscribes;
 *                       GET reads the retained message of a topic
 *   empty CON           a ping: RST, and the device is heard
 * and the cloud's requests to the device, one outstanding at a time (NSTART
 * 1), confirmable ones retransmitted at ACK_TIMEOUT..x1.5, doubling, at most
 * MAX_RETRANSMIT times:
 *   POST /m/<topic>     a message for the device (CON for QoS 1, NON for 0)
 *   POST /c/<function>  a function call: the response's payload is its return value
 *   GET  /v/<variable>  a variable read: the response's payload is the value
 *
 * Deduplication: the responses to the device's last COAP_SEEN messages are
 * kept (for EXCHANGE_LIFETIME); a repeated message id gets the same
 * response again and is not handled twice.
 */
#include "coap/coap_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "core/cy_reason.h"
#include "router/topic.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PATH_MAX_BYTES 1024

static coap_ep *ep_of(cy_link *l)
{
    return (coap_ep *)l;
}

static int64_t now_ms(const cy_coap *c)
{
    return (int64_t)uv_now(c->loop);
}

/* ---- the busy list (endpoints with an outstanding message) ---- */

static void busy_link(cy_coap *c, coap_ep *ep)
{
    if (ep->busy_linked) return;
    ep->busy_prev = NULL;
    ep->busy_next = c->busy;
    if (c->busy) c->busy->busy_prev = ep;
    c->busy = ep;
    ep->busy_linked = true;
}

static void busy_unlink(cy_coap *c, coap_ep *ep)
{
    if (!ep->busy_linked) return;
    if (ep->busy_prev)
        ep->busy_prev->busy_next = ep->busy_next;
    else
        c->busy = ep->busy_next;
    if (ep->busy_next) ep->busy_next->busy_prev = ep->busy_prev;
    ep->busy_next = ep->busy_prev = NULL;
    ep->busy_linked = false;
}

/* ---- sending ---- */

static void send_raw(coap_ep *ep, const uint8_t *p, size_t len)
{
    coap_output(ep->c, ep->via, ep->term, &ep->addr, p, len);
}

static uint32_t first_timeout(cy_coap *c)
{
    /* ACK_TIMEOUT .. ACK_TIMEOUT * ACK_RANDOM_FACTOR */
    return COAP_ACK_TIMEOUT_MS +
           coap_rand32(c) % (uint32_t)(COAP_ACK_TIMEOUT_MS * (COAP_ACK_RANDOM_FACTOR - 1));
}

static void free_queue(coap_ep *ep)
{
    while (ep->q_head) {
        coap_out *o = ep->q_head;
        ep->q_head = o->next;
        cy_free(o);
    }
    ep->q_tail = NULL;
    ep->n_q = 0;
    cy_free(ep->inflight);
    ep->inflight = NULL;
    busy_unlink(ep->c, ep);
}

/* Send the next waiting confirmable message, if the slot is free. */
static void send_next(coap_ep *ep)
{
    cy_coap *c = ep->c;
    if (ep->inflight || !ep->q_head || !ep->online) return;
    coap_out *o = ep->q_head;
    ep->q_head = o->next;
    if (!ep->q_head) ep->q_tail = NULL;
    ep->n_q--;
    o->next = NULL;
    uint16_t mid = coap_mid_for(c, ep->mid_seq++);
    o->bytes[2] = (uint8_t)(mid >> 8);
    o->bytes[3] = (uint8_t)mid;
    ep->inflight = o;
    ep->inflight_mid = mid;
    ep->retx_n = 0;
    ep->retx_ms = first_timeout(c);
    ep->retx_at = now_ms(c) + ep->retx_ms;
    busy_link(c, ep);
    send_raw(ep, o->bytes, o->len);
}

/* A new message for the device (up to coap_max_message bytes), or NULL
 * (*err CY_ENOMEM). */
static coap_out *out_new(coap_ep *ep, int *err)
{
    coap_out *o = cy_malloc(sizeof(*o) + ep->c->cfg->coap_max_message);
    if (!o) {
        *err = CY_ENOMEM;
        return NULL;
    }
    memset(o, 0, sizeof(*o));
    o->obs = -1;
    return o;
}

/* Finish o's encoding in w: o, or NULL (freed; *err: CY_EMSGSIZE over
 * coap_max_message, CY_EINVAL). */
static coap_out *out_end(coap_out *o, cy_coap_writer *w, int *err)
{
    size_t len;
    *err = cy_coap_w_end(w, &len);
    if (*err) {
        cy_free(o);
        return NULL;
    }
    o->len = (uint16_t)len;
    return o;
}

/* Encode a request to the device: code, path segments (first, then the
 * '/'-separated levels of rest), payload. NULL if over coap_max_message
 * (*err CY_EMSGSIZE) or out of memory. */
static coap_out *make_request(coap_ep *ep, uint8_t type, uint8_t code, const char *first,
                              const char *rest, size_t rest_len, const uint8_t *payload,
                              size_t plen, int *err)
{
    cy_coap *c = ep->c;
    size_t cap = c->cfg->coap_max_message;
    coap_out *o = out_new(ep, err);
    if (!o) return NULL;
    /* The owner, for plain routing, then 32 random bits (RFC 7252 5.3.1:
     * an off-path attacker must not guess a token over plain UDP). */
    o->tkl = 5;
    o->token[0] = (uint8_t)c->self;
    if (RAND_bytes(o->token + 1, 4) != 1) {
        uint32_t t = coap_rand32(c) ^ ep->tok_seq++;
        memcpy(o->token + 1, &t, 4);
    }
    cy_coap_writer w;
    cy_coap_w_init(&w, o->bytes, cap, type, code, 0, o->token, o->tkl);
    cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, first, strlen(first));
    size_t start = 0;
    for (size_t i = 0; i <= rest_len; i++) {
        if (i == rest_len || rest[i] == '/') {
            cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, rest + start, i - start);
            start = i + 1;
        }
    }
    cy_coap_w_payload(&w, payload, plen);
    return out_end(o, &w, err);
}

static void enqueue(coap_ep *ep, coap_out *o)
{
    if (ep->q_tail)
        ep->q_tail->next = o;
    else
        ep->q_head = o;
    ep->q_tail = o;
    ep->n_q++;
    send_next(ep);
}

/* A notification of observation slot (RFC 7641): 2.05 with its token and
 * the next Observe number. */
static coap_out *make_notification(coap_ep *ep, int slot, bool con, const cy_msg *msg, int *err)
{
    const coap_obs *ob = &ep->obs[slot];
    size_t cap = ep->c->cfg->coap_max_message;
    coap_out *o = out_new(ep, err);
    if (!o) return NULL;
    o->obs = (int8_t)slot;
    o->tkl = ob->tkl;
    memcpy(o->token, ob->token, ob->tkl);
    cy_coap_writer w;
    cy_coap_w_init(&w, o->bytes, cap, con ? CY_COAP_CON : CY_COAP_NON, CY_COAP_CONTENT, 0, o->token,
                   o->tkl);
    cy_coap_w_opt_uint(&w, CY_COAP_OPT_OBSERVE, ep->obs_seq++ & 0xFFFFFF);
    cy_coap_w_opt_uint(&w, CY_COAP_OPT_CONTENT_FORMAT, CY_COAP_FMT_OCTETS);
    cy_coap_w_payload(&w, msg->payload, msg->payload_len);
    return out_end(o, &w, err);
}

static int obs_of(const coap_ep *ep, const cy_link_msg *lm);

/* ---- the link (device/link.h) ---- */

static int link_send(cy_link *l, const cy_link_msg *lm)
{
    coap_ep *ep = ep_of(l);
    cy_coap *c = ep->c;
    if (!ep->online) return CY_EPIPE;
    int err;
    bool con = lm->qos > 0;
    int slot = obs_of(ep, lm);
    coap_out *o = slot >= 0 ? make_notification(ep, slot, con, lm->m, &err)
                            : make_request(ep, con ? CY_COAP_CON : CY_COAP_NON, CY_COAP_POST, "m",
                                           lm->m->topic, lm->m->topic_len, lm->m->payload,
                                           lm->m->payload_len, &err);
    if (!o) return err;
    o->kind = OUT_DELIVERY;
    o->qos = con ? 1 : 0;
    o->pkt_id = lm->id;
    if (con) {
        enqueue(ep, o);
        return 0;
    }
    uint16_t mid = coap_mid_for(c, ep->mid_seq++);
    o->bytes[2] = (uint8_t)(mid >> 8);
    o->bytes[3] = (uint8_t)mid;
    send_raw(ep, o->bytes, o->len);
    cy_free(o);
    return 0;
}

static int link_send_release(cy_link *l, uint16_t id)
{
    (void)l;
    (void)id;
    return 0; /* CoAP subscriptions are QoS 0 or 1: no QoS 2 flow to release */
}

static uint32_t link_window(const cy_link *l)
{
    (void)l;
    return 1; /* NSTART */
}

static bool link_ready(const cy_link *l)
{
    return ((const coap_ep *)l)->online;
}

static bool link_congested(const cy_link *l)
{
    return ((const coap_ep *)l)->n_q >= COAP_QUEUE_MAX;
}

static void go_offline(coap_ep *ep, const char *why, cy_presence_reason reason);
static void obs_cancel(coap_ep *ep, coap_obs *o);
static void block1_reset(coap_ep *ep);
static void answer_reset(coap_ep *ep);

static void link_close(cy_link *l, uint8_t reason, const char *why)
{
    coap_ep *ep = ep_of(l);
    go_offline(ep, why ? why : "closed", cy_presence_reason_of(reason, false));
    /* Deleted (the device layer closes with Not authorized): its DTLS
     * sessions end too, wherever they are. */
    if (reason == CY_REASON_NOT_AUTHORIZED) cy_coap_kick(ep->c, ep->id);
}

static const char *link_protocol(const cy_link *l)
{
    return ((const coap_ep *)l)->via == COAP_VIA_DTLS ? "coaps" : "coap";
}

static int64_t link_last_heard(const cy_link *l)
{
    return ((const coap_ep *)l)->last_rx;
}

static int link_call(cy_link *l, const char *verb, const char *name, const char *rid,
                     const uint8_t *arg, size_t len)
{
    coap_ep *ep = ep_of(l);
    if (!ep->online) return CY_EPIPE;
    if (ep->n_q >= COAP_QUEUE_MAX) return CY_ENOBUFS; /* the deadline answers it */
    bool get = !strcmp(verb, "get");
    int err;
    coap_out *o = make_request(ep, CY_COAP_CON, get ? CY_COAP_GET : CY_COAP_POST, get ? "v" : "c",
                               name, strlen(name), get ? NULL : arg, get ? 0 : len, &err);
    if (!o) return err;
    o->kind = OUT_CALL;
    snprintf(o->rid, sizeof(o->rid), "%s", rid);
    enqueue(ep, o);
    return 0;
}

static const cy_link_ops coap_link_ops = {
    .send = link_send,
    .send_release = link_send_release,
    .window = link_window,
    .ready = link_ready,
    .congested = link_congested,
    .close = link_close,
    .protocol = link_protocol,
    .last_heard = link_last_heard,
    .call = link_call,
};

/* ---- endpoints ---- */

static coap_ep *ep_find(cy_coap *c, const char *id, size_t id_len)
{
    return cy_map_get(&c->eps, id, id_len);
}

/* A plain endpoint by the address it was last heard from (ACKs, pings and
 * responses name no device). */
static coap_ep *ep_by_addr(cy_coap *c, const coap_addr *a)
{
    uint8_t key[19];
    size_t kl = coap_addr_key(a, key);
    return cy_map_get(&c->by_addr, key, kl);
}

static void addr_unindex(cy_coap *c, coap_ep *ep)
{
    if (ep->akey_len && cy_map_get(&c->by_addr, ep->akey, ep->akey_len) == ep)
        cy_map_del(&c->by_addr, ep->akey, ep->akey_len);
    ep->akey_len = 0;
}

/* Index a plain endpoint by its address; the address's previous endpoint
 * (another device now behind it) loses it. */
static void addr_index(cy_coap *c, coap_ep *ep)
{
    addr_unindex(c, ep);
    if (ep->via != COAP_VIA_PLAIN) return;
    uint8_t key[19];
    size_t kl = coap_addr_key(&ep->addr, key);
    coap_ep *old = cy_map_del(&c->by_addr, key, kl);
    if (old) old->akey_len = 0;
    memcpy(ep->akey, key, kl);
    if (cy_map_put(&c->by_addr, ep->akey, kl, ep) == 0) ep->akey_len = (uint8_t)kl;
}

static coap_ep *ep_new(cy_coap *c, const char *id, size_t id_len)
{
    coap_ep *ep = cy_calloc(1, sizeof(*ep) + id_len + 1);
    if (!ep) return NULL;
    ep->link.ops = &coap_link_ops;
    ep->c = c;
    memcpy(ep->id, id, id_len);
    ep->id_len = (uint16_t)id_len;
    ep->mid_seq = coap_rand32(c); /* not the same ids after a restart (RFC 7252 4.4) */
    if (cy_map_put(&c->eps, ep->id, id_len, ep)) {
        cy_free(ep);
        return NULL;
    }
    return ep;
}

static void ep_free(cy_coap *c, coap_ep *ep)
{
    free_queue(ep);
    addr_unindex(c, ep);
    for (unsigned i = 0; i < COAP_OBS_MAX; i++)
        cy_free(ep->obs[i].filter);
    for (unsigned i = 0; i < COAP_WAITS_MAX; i++)
        cy_free(ep->waits[i].req);
    cy_free(ep->blk.buf);
    cy_free(ep->ans.buf);
    for (unsigned i = 0; i < COAP_SEEN; i++)
        cy_free(ep->seen[i].resp);
    cy_map_del(&c->eps, ep->id, ep->id_len);
    cy_free(ep);
}

static void go_online(coap_ep *ep)
{
    cy_coap *c = ep->c;
    cy_devices *d = c->devices;
    cy_session *s = cy_session_find(d, ep->id, ep->id_len);
    if (s && s->link) { /* an MQTT connection of the same device: taken over */
        cy_info(ep->id, "session taken over by CoAP");
        s->link->ops->close(s->link, CY_REASON_TAKEN_OVER, "session taken over");
        s = cy_session_find(d, ep->id, ep->id_len);
    }
    if (!s) {
        s = cy_session_new(d, ep->id, ep->id_len);
        if (!s) return;
        /* No new persistent session on a full disk (it would need rows). */
        uint32_t expiry = cy_space_full(c->space) ? 0 : c->cfg->coap_session_expiry;
        s->expiry = expiry;
        s->persistent = expiry > 0;
    }
    s->version = 5;
    /* Observations of an earlier life of this shard are gone with their
     * tokens: so are their subscriptions. */
    for (uint32_t i = s->n_subs; i-- > 0;) {
        cy_sub *sub = &s->subs[i];
        if (sub->sub_id >= COAP_OBS_SUB_ID && sub->sub_id < COAP_OBS_SUB_ID + COAP_OBS_MAX)
            cy_session_unsubscribe(d, s, sub->filter, sub->len);
    }
    cy_session_attach(d, s, &ep->link);
    /* For the ACL its username is its device id, the session's name: no
     * copy is made, so this cannot fail. */
    (void)cy_session_set_who(d, s, ep->id, ep->id_len,
                             cy_registry_device_internal(c->registry, ep->id, ep->id_len) == 1);
    cy_session_persist(d, s);
    ep->sess = s;
    ep->online = true;
    ep->offline_at = 0;
    c->online++;
    c->stats->coap_online = c->online;
    char t[64];
    cy_connsum_opened(ep->via == COAP_VIA_DTLS ? CY_CONN_COAPS : CY_CONN_COAP);
    cy_debug(ep->id, "online over %s from %s", link_protocol(&ep->link),
             coap_addr_text(&ep->addr, t, sizeof(t)));
    cy_device_online(d, s, &ep->link);
    cy_session_resume(d, s);
}

static void go_offline(coap_ep *ep, const char *why, cy_presence_reason reason)
{
    cy_coap *c = ep->c;
    if (!ep->online) return;
    ep->online = false;
    ep->offline_at = now_ms(c);
    c->online--;
    c->stats->coap_online = c->online;
    free_queue(ep); /* what was in flight stays in the session: resent when it is back */
    /* Observations are soft state (RFC 7641): a device back online registers again. */
    for (unsigned i = 0; i < COAP_OBS_MAX; i++)
        obs_cancel(ep, &ep->obs[i]);
    block1_reset(ep);
    answer_reset(ep); /* a call whose answer was coming in blocks: its deadline answers it */
    cy_session *s = ep->sess;
    ep->sess = NULL;
    cy_connsum_closed(ep->via == COAP_VIA_DTLS ? CY_CONN_COAPS : CY_CONN_COAP);
    cy_debug(ep->id, "offline: %s", why);
    if (s) {
        cy_device_offline(c->devices, s, &ep->link, reason);
        cy_session_detach(c->devices, s, false);
    }
}

/* The device was heard from a (via term). */
static void heard(coap_ep *ep, uint8_t via, uint8_t term, const coap_addr *a)
{
    ep->last_rx = now_ms(ep->c);
    if (via == COAP_VIA_DTLS) (void)cy_cluster_peer_up(ep->c->cluster, term, &ep->term_gen);
    if (!coap_addr_eq(&ep->addr, a) || ep->via != via || ep->term != term) {
        if (ep->online && cy_log_enabled(CY_LOG_DEBUG)) {
            char t[64];
            cy_debug(ep->id, "now at %s", coap_addr_text(a, t, sizeof(t)));
        }
        ep->addr = *a;
        ep->via = via;
        ep->term = term;
        ep->addr_verified = false;
        /* Message ids are per endpoint (RFC 7252 4.5): a new address (a
         * new NAT binding, a rebooted device) starts a new id space. */
        for (unsigned i = 0; i < COAP_SEEN; i++) {
            cy_free(ep->seen[i].resp);
            memset(&ep->seen[i], 0, sizeof(ep->seen[i]));
        }
        addr_index(ep->c, ep);
    }
    if (!ep->online) go_online(ep);
}

/* ---- answering the device's messages ---- */

static coap_seen *seen_find(coap_ep *ep, uint16_t mid, int64_t now)
{
    for (unsigned i = 0; i < COAP_SEEN; i++) {
        coap_seen *s = &ep->seen[i];
        if (s->at && s->mid == mid && now - s->at < COAP_SEEN_MS) return s;
    }
    return NULL;
}

/* Remember the answer to the device's message mid (a copy), send it. */
static void reply(coap_ep *ep, uint16_t mid, const uint8_t *p, size_t len)
{
    coap_seen *s = &ep->seen[ep->seen_next++ % COAP_SEEN];
    cy_free(s->resp);
    s->resp = NULL;
    s->len = 0;
    s->at = now_ms(ep->c);
    s->mid = mid;
    if (len) {
        s->resp = cy_malloc(len);
        if (s->resp) {
            memcpy(s->resp, p, len);
            s->len = (uint16_t)len;
        }
        send_raw(ep, p, len);
    }
}

typedef struct answer {
    uint8_t code;
    const char *diag;       /* diagnostic payload (static text), or NULL */
    const uint8_t *payload; /* or a payload (borrowed), or NULL */
    size_t plen;
    uint32_t max_age; /* 0: no Max-Age option */
    bool observe;     /* an Observe option (the observation's sequence number) */
    bool has_block1;  /* echo the request's Block1 (RFC 7959 2.3) */
    cy_coap_block block1;
} answer;

/* No-Response (RFC 7967): does the request ask us not to answer code? */
static bool suppressed(const cy_coap_msg *m, uint8_t code)
{
    const cy_coap_opt *o = cy_coap_opt_find(m, CY_COAP_OPT_NO_RESPONSE);
    uint32_t v;
    if (!o || cy_coap_opt_uint(o, &v)) return false;
    uint8_t cls = CY_COAP_CLASS(code);
    return (cls == 2 && (v & 2)) || (cls == 4 && (v & 8)) || (cls == 5 && (v & 16));
}

/* ---- Echo (RFC 9175): a plain address proves it receives what we send ---- */

#define ECHO_LEN 8
#define ECHO_PERIOD_MS 60000

static void echo_value(const coap_ep *ep, int64_t period, uint8_t out[ECHO_LEN])
{
    uint8_t data[19 + 8];
    size_t kl = coap_addr_key(&ep->addr, data);
    for (int i = 0; i < 8; i++)
        data[kl + (size_t)i] = (uint8_t)((uint64_t)period >> (8 * i));
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned ml = 0;
    HMAC(EVP_sha256(), ep->c->echo_key, sizeof(ep->c->echo_key), data, kl + 8, mac, &ml);
    memcpy(out, mac, ECHO_LEN);
}

/* Does the request echo a value we gave this address (this period or the last)? */
static bool echo_ok(const coap_ep *ep, const cy_coap_msg *m)
{
    const cy_coap_opt *o = cy_coap_opt_find(m, CY_COAP_OPT_ECHO);
    if (!o || o->len != ECHO_LEN) return false;
    int64_t period = now_ms(ep->c) / ECHO_PERIOD_MS;
    uint8_t v[ECHO_LEN];
    for (int64_t p = period; p >= period - 1; p--) {
        echo_value(ep, p, v);
        if (CRYPTO_memcmp(v, o->val, ECHO_LEN) == 0) return true;
    }
    return false;
}

/* The largest block size (szx) whose block fits in a message of cap bytes
 * with room for the header, token and options. */
static uint8_t block_szx(size_t cap)
{
    uint8_t szx = 6;
    while (szx > 0 && cy_coap_block_size(szx) + 64 > cap)
        szx--;
    return szx;
}

static void respond(coap_ep *ep, const cy_coap_msg *m, const answer *an_in)
{
    answer an = *an_in;
    uint8_t buf[2048];
    size_t cap =
        ep->c->cfg->coap_max_message < sizeof(buf) ? ep->c->cfg->coap_max_message : sizeof(buf);
    if (suppressed(m, an.code)) {
        if (m->type == CY_COAP_CON) {
            uint8_t b[CY_COAP_HEADER];
            reply(ep, m->mid, b, cy_coap_empty(b, CY_COAP_ACK, m->mid));
        } else {
            reply(ep, m->mid, NULL, 0);
        }
        return;
    }
    /* Block2 (RFC 7959): a payload that does not fit goes a block at a
     * time; the device asks for the next with Block2 num+1. */
    bool block2 = false;
    cy_coap_block b2 = {0, false, block_szx(cap)};
    size_t total = an.plen;
    const cy_coap_opt *b2o = cy_coap_opt_find(m, CY_COAP_OPT_BLOCK2);
    cy_coap_block want;
    if (an.payload && CY_COAP_CLASS(an.code) == 2 &&
        (an.plen + 64 > cap || (b2o && cy_coap_block_decode(b2o, &want) == 0))) {
        if (b2o && cy_coap_block_decode(b2o, &want) == 0) {
            if (want.szx < b2.szx) b2.szx = want.szx;
            b2.num =
                want.num * (uint32_t)(cy_coap_block_size(want.szx) / cy_coap_block_size(b2.szx));
        }
        size_t bs = cy_coap_block_size(b2.szx), off = (size_t)b2.num * bs;
        if (off >= total && total) {
            an = (answer){.code = CY_COAP_BAD_OPTION, .diag = "no such block"};
        } else {
            block2 = true;
            b2.more = off + bs < total;
            an.payload += off;
            an.plen = b2.more ? bs : total - off;
        }
    }
    cy_coap_writer w;
    bool con = m->type == CY_COAP_CON;
    uint16_t mid = con ? m->mid : coap_mid_for(ep->c, ep->mid_seq++);
    cy_coap_w_init(&w, buf, cap, con ? CY_COAP_ACK : CY_COAP_NON, an.code, mid, m->token, m->tkl);
    if (an.observe) cy_coap_w_opt_uint(&w, CY_COAP_OPT_OBSERVE, ep->obs_seq++ & 0xFFFFFF);
    if (an.payload && an.plen)
        cy_coap_w_opt_uint(&w, CY_COAP_OPT_CONTENT_FORMAT, CY_COAP_FMT_OCTETS);
    if (an.max_age) cy_coap_w_opt_uint(&w, CY_COAP_OPT_MAX_AGE, an.max_age);
    if (block2) cy_coap_w_opt_uint(&w, CY_COAP_OPT_BLOCK2, cy_coap_block_value(&b2));
    if (an.has_block1) cy_coap_w_opt_uint(&w, CY_COAP_OPT_BLOCK1, cy_coap_block_value(&an.block1));
    if (block2 && b2.num == 0) cy_coap_w_opt_uint(&w, CY_COAP_OPT_SIZE2, (uint32_t)total);
    if (an.code == CY_COAP_TOO_LARGE)
        cy_coap_w_opt_uint(&w, CY_COAP_OPT_SIZE1,
                           an.has_block1 ? COAP_BLOCK1_MAX : ep->c->cfg->coap_max_message);
    if (an.payload)
        cy_coap_w_payload(&w, an.payload, an.plen);
    else if (an.diag)
        cy_coap_w_payload(&w, an.diag, strlen(an.diag));
    size_t len;
    if (cy_coap_w_end(&w, &len)) { /* the payload did not fit */
        cy_coap_w_init(&w, buf, cap, con ? CY_COAP_ACK : CY_COAP_NON, CY_COAP_INTERNAL_ERROR, mid,
                       m->token, m->tkl);
        cy_coap_w_payload(&w, "response too large", 18);
        if (cy_coap_w_end(&w, &len)) return;
    }
    /* Against amplification from a spoofed plain source: no answer more
     * than 3 times the request's size to an address that has not proved,
     * by echoing a value we sent it, that it is the sender (RFC 9175 2.4). */
    if (ep->via == COAP_VIA_PLAIN && !ep->addr_verified && len > 3 * ep->req_len && len > 64) {
        uint8_t ev[ECHO_LEN];
        echo_value(ep, now_ms(ep->c) / ECHO_PERIOD_MS, ev);
        cy_coap_w_init(&w, buf, cap, con ? CY_COAP_ACK : CY_COAP_NON, CY_COAP_UNAUTHORIZED, mid,
                       m->token, m->tkl);
        cy_coap_w_opt(&w, CY_COAP_OPT_ECHO, ev, sizeof(ev));
        if (cy_coap_w_end(&w, &len)) return;
    }
    reply(ep, m->mid, buf, len);
}

static answer refused(uint8_t code, const char *diag)
{
    return (answer){.code = code, .diag = diag};
}

/* An MQTT 5 reason code (a refusal of cy_device_admit or the router) as a
 * CoAP answer. */
static answer from_reason(int reason, const char *why)
{
    switch (reason) {
    case CY_REASON_NOT_AUTHORIZED:
        return refused(CY_COAP_FORBIDDEN, why);
    case CY_REASON_QUOTA_EXCEEDED: {
        answer a = refused(CY_COAP_UNAVAILABLE, why);
        a.max_age = 30;
        return a;
    }
    default:
        return refused(CY_COAP_BAD_REQUEST, why);
    }
}

/* The path below the first segment ("e", "t", "s"...) joined with '/'.
 * filter: '+' and '#' are allowed (a topic filter). Returns its length, or
 * -1 if a segment cannot be a topic level (holds '/' or NUL) or it is too long. */
static int rest_of_path(const cy_coap_msg *m, char *out, size_t cap, bool filter)
{
    size_t n = 0;
    unsigned seg = 0;
    for (unsigned i = 0; i < m->n_opts; i++) {
        const cy_coap_opt *o = &m->opts[i];
        if (o->num != CY_COAP_OPT_URI_PATH) continue;
        if (seg++ == 0) continue;
        if (seg > 2) {
            if (n + 1 >= cap) return -1;
            out[n++] = '/';
        }
        if (n + o->len >= cap) return -1;
        for (unsigned k = 0; k < o->len; k++) {
            uint8_t ch = o->val[k];
            if (ch == '/' || ch == 0 || (!filter && (ch == '+' || ch == '#'))) return -1;
        }
        if (o->len) memcpy(out + n, o->val, o->len);
        n += o->len;
    }
    out[n] = '\0';
    return seg >= 2 ? (int)n : -1;
}

static const char *first_segment(const cy_coap_msg *m, size_t *len)
{
    const cy_coap_opt *o = cy_coap_opt_find(m, CY_COAP_OPT_URI_PATH);
    *len = o ? o->len : 0;
    return o ? (const char *)o->val : "";
}

/* Publish topic as the device: the checks every input path shares. */
static answer publish(coap_ep *ep, const cy_coap_msg *m, const char *topic, size_t tlen,
                      bool retain)
{
    cy_coap *c = ep->c;
    uint8_t qos = m->type == CY_COAP_CON ? 1 : 0;
    c->stats->publish_received++;
    if (qos)
        c->stats->publish_received_qos1++;
    else
        c->stats->publish_received_qos0++;
    /* max_publish_rate, max_publish_bytes_rate: 4.29 Too Many Requests
     * (RFC 8516), Max-Age saying in how many seconds the rate allows
     * again. A repeated message id gets its first answer, uncharged. */
    int64_t now_us = now_ms(c) * 1000;
    if (cy_pub_rate_on(c->cfg) &&
        !cy_pub_rate_take(&ep->rate, c->cfg, tlen + m->payload_len, now_us)) {
        c->stats->limit_publish_rate++;
        answer a = refused(CY_COAP_TOO_MANY_REQUESTS, "over max_publish_rate");
        int64_t wait = cy_pub_rate_wait(&ep->rate, c->cfg, now_us);
        a.max_age = (uint32_t)((wait + 999999) / 1000000);
        if (a.max_age == 0) a.max_age = 1;
        return a;
    }
    if (!cy_topic_valid_name(topic, tlen)) return refused(CY_COAP_BAD_REQUEST, "not a valid topic");
    bool reply_topic = false;
    const char *why = NULL;
    cy_who who;
    cy_session_who(ep->sess, &who);
    int reason =
        cy_device_admit(c->devices, c->cfg->isolate_devices ? ep->id : NULL, ep->id_len, &who,
                        topic, tlen, m->payload, m->payload_len, &retain, &reply_topic, &why);
    if (reason) return from_reason(reason, why);
    if (reply_topic)
        return refused(CY_COAP_BAD_REQUEST,
                       "over CoAP a call is answered in the response to the cloud's request");
    if ((qos || retain) && cy_space_full(c->space)) {
        c->stats->store_full_refusals++;
        answer a = refused(CY_COAP_UNAVAILABLE, "the server's disk is full");
        a.max_age = 60;
        return a;
    }
    cy_msg *msg = cy_msg_new(topic, tlen, m->payload, m->payload_len, NULL, 0, qos, retain, 0);
    if (!msg) return refused(CY_COAP_INTERNAL_ERROR, "out of memory");
    int rc = retain ? cy_router_retain_check(c->router, ep->id, msg) : 0;
    if (!rc) rc = cy_session_publish(c->devices, ep->sess, msg, true);
    cy_msg_unref(msg);
    if (rc)
        return from_reason(rc, "refused: a limit was reached (retained messages, or a "
                               "peer shard's outbox is full)");
    return (answer){.code = CY_COAP_CHANGED};
}

static answer subscribe(coap_ep *ep, const cy_coap_msg *m, const char *f, size_t flen,
                        uint32_t sub_id, bool *fresh, uint8_t *qos_out)
{
    cy_coap *c = ep->c;
    cy_session *s = ep->sess;
    uint8_t qos = 1;
    const uint8_t *v;
    size_t vlen;
    if (cy_coap_query(m, "qos", &v, &vlen) == 0) {
        if (vlen != 1 || (v[0] != '0' && v[0] != '1'))
            return refused(CY_COAP_BAD_REQUEST, "qos is 0 or 1");
        qos = (uint8_t)(v[0] - '0');
    }
    if (flen > c->cfg->max_topic_length || !cy_topic_valid_filter(f, flen) || f[0] == '$')
        return refused(CY_COAP_BAD_REQUEST, "not a valid topic filter");
    if (c->cfg->isolate_devices && !cy_device_topic_ok(ep->id, ep->id_len, f, flen)) {
        c->stats->acl_denied++;
        return refused(CY_COAP_FORBIDDEN, "a device subscribes within devices/<id>/ and events/");
    }
    cy_who who;
    cy_session_who(s, &who);
    if (!cy_device_acl(c->devices, &who, f, flen, CY_ACL_SUBSCRIBE))
        return refused(CY_COAP_FORBIDDEN, "denied by acl_file");
    if (s->persistent && cy_space_full(c->space)) {
        c->stats->store_full_refusals++;
        return refused(CY_COAP_UNAVAILABLE, "the server's disk is full");
    }
    if (!cy_session_find_sub(s, f, flen) && s->n_subs >= c->cfg->max_subscriptions) {
        c->stats->limit_subscriptions++;
        return refused(CY_COAP_UNAVAILABLE, "max_subscriptions reached");
    }
    if (cy_session_subscribe(c->devices, s, f, flen, qos, sub_id, fresh))
        return refused(CY_COAP_INTERNAL_ERROR, "out of memory");
    *qos_out = qos;
    return (answer){.code = CY_COAP_CHANGED};
}

/* ---- observations (RFC 7641) ---- */

static coap_obs *obs_find(coap_ep *ep, const char *f, size_t flen)
{
    for (unsigned i = 0; i < COAP_OBS_MAX; i++)
        if (ep->obs[i].filter && ep->obs[i].flen == flen && !memcmp(ep->obs[i].filter, f, flen))
            return &ep->obs[i];
    return NULL;
}

/* End observation o: its subscription goes too. */
static void obs_cancel(coap_ep *ep, coap_obs *o)
{
    if (!o->filter) return;
    if (ep->sess) cy_session_unsubscribe(ep->c->devices, ep->sess, o->filter, o->flen);
    cy_free(o->filter);
    memset(o, 0, sizeof(*o));
}

/* The observation a delivery is for (its subscription identifiers). */
static int obs_of(const coap_ep *ep, const cy_link_msg *lm)
{
    for (uint32_t i = 0; i < lm->n_sub_ids; i++) {
        uint32_t id = lm->sub_ids[i];
        if (id >= COAP_OBS_SUB_ID && id < COAP_OBS_SUB_ID + COAP_OBS_MAX &&
            ep->obs[id - COAP_OBS_SUB_ID].filter)
            return (int)(id - COAP_OBS_SUB_ID);
    }
    return -1;
}

/* GET /s/<filter> with Observe 0: register (or renew: a new token), with
 * the same checks as a subscription. The answer is the current state: the
 * retained message of the topic, if any. */
static answer observe(coap_ep *ep, const cy_coap_msg *m, const char *f, size_t flen)
{
    coap_obs *o = obs_find(ep, f, flen);
    unsigned slot = 0;
    if (!o) {
        for (slot = 0; slot < COAP_OBS_MAX && ep->obs[slot].filter; slot++)
            ;
        if (slot == COAP_OBS_MAX) /* RFC 7641 4.1: answered as a plain GET */
            return (answer){.code = 0};
    } else {
        slot = (unsigned)(o - ep->obs);
    }
    bool fresh;
    uint8_t qos;
    answer an = subscribe(ep, m, f, flen, COAP_OBS_SUB_ID + slot, &fresh, &qos);
    if (an.code != CY_COAP_CHANGED) return an;
    o = &ep->obs[slot];
    if (!o->filter) {
        o->filter = cy_malloc(flen + 1);
        if (!o->filter) {
            cy_session_unsubscribe(ep->c->devices, ep->sess, f, flen);
            return refused(CY_COAP_INTERNAL_ERROR, "out of memory");
        }
        memcpy(o->filter, f, flen);
        o->filter[flen] = '\0';
        o->flen = (uint16_t)flen;
    }
    o->tkl = m->tkl;
    memcpy(o->token, m->token, m->tkl);
    cy_msg *r = cy_router_retained(ep->c->router, f, flen);
    return (answer){.code = CY_COAP_CONTENT,
                    .observe = true,
                    .payload = r ? r->payload : NULL,
                    .plen = r ? r->payload_len : 0};
}

/* ---- block-wise request bodies (RFC 7959 Block1) ---- */

static void block1_reset(coap_ep *ep)
{
    cy_free(ep->blk.buf);
    memset(&ep->blk, 0, sizeof(ep->blk));
}

static uint64_t resource_hash(const cy_coap_msg *m)
{
    uint64_t h = 1469598103934665603ull;
    for (unsigned i = 0; i < m->n_opts; i++) {
        const cy_coap_opt *o = &m->opts[i];
        if (o->num != CY_COAP_OPT_URI_PATH && o->num != CY_COAP_OPT_URI_QUERY) continue;
        h = (h ^ o->num) * 1099511628211ull;
        for (unsigned k = 0; k < o->len; k++)
            h = (h ^ o->val[k]) * 1099511628211ull;
    }
    return h;
}

/* A block of a request body: 1 and *an set when the request is answered
 * here (2.31 Continue, or an error); 0 when the body is whole: then *full
 * is the request with the whole body (pointing into ep->blk) and *an has
 * the Block1 option to echo. */
static int block1(coap_ep *ep, const cy_coap_msg *m, const cy_coap_opt *o, cy_coap_msg *full,
                  answer *an)
{
    cy_coap_block b;
    if (cy_coap_block_decode(o, &b)) {
        *an = refused(CY_COAP_BAD_OPTION, "bad Block1");
        return 1;
    }
    uint64_t h = resource_hash(m);
    if (b.num == 0) {
        block1_reset(ep);
        ep->blk.szx = b.szx;
        ep->blk.code = m->code;
        ep->blk.path = h;
    }
    *an = (answer){.has_block1 = true, .block1 = b};
    if (b.num != ep->blk.next || (b.num && !ep->blk.buf) || h != ep->blk.path ||
        m->code != ep->blk.code || b.szx != ep->blk.szx ||
        (b.more && m->payload_len != cy_coap_block_size(b.szx))) {
        block1_reset(ep);
        an->code = CY_COAP_INCOMPLETE;
        an->diag = "blocks out of order: start again at block 0";
        return 1;
    }
    if (ep->blk.len + m->payload_len > COAP_BLOCK1_MAX) {
        block1_reset(ep);
        an->code = CY_COAP_TOO_LARGE;
        return 1;
    }
    uint8_t *nb = cy_realloc(ep->blk.buf, ep->blk.len + m->payload_len + 1);
    if (!nb) {
        block1_reset(ep);
        an->code = CY_COAP_INTERNAL_ERROR;
        return 1;
    }
    ep->blk.buf = nb;
    if (m->payload_len) memcpy(nb + ep->blk.len, m->payload, m->payload_len);
    ep->blk.len += m->payload_len;
    ep->blk.next++;
    ep->blk.at = now_ms(ep->c);
    if (b.more) {
        an->code = CY_COAP_CONTINUE;
        return 1;
    }
    *full = *m;
    full->payload = ep->blk.buf;
    full->payload_len = ep->blk.len;
    return 0;
}

static void request(coap_ep *ep, const cy_coap_msg *m_in)
{
    cy_coap *c = ep->c;
    static const uint16_t known[] = {
        CY_COAP_OPT_URI_HOST, CY_COAP_OPT_URI_PORT, CY_COAP_OPT_URI_PATH, CY_COAP_OPT_URI_QUERY,
        CY_COAP_OPT_ACCEPT,   CY_COAP_OPT_BLOCK1,   CY_COAP_OPT_BLOCK2};
    uint16_t bad = cy_coap_unknown_critical(m_in, known, sizeof(known) / sizeof(known[0]));
    if (bad) {
        respond(ep, m_in,
                &(answer){.code = CY_COAP_BAD_OPTION, .diag = "unsupported critical option"});
        return;
    }
    if (ep->via == COAP_VIA_PLAIN && !ep->addr_verified && echo_ok(ep, m_in))
        ep->addr_verified = true;
    /* A body in blocks is put together first. */
    cy_coap_msg whole;
    const cy_coap_msg *m = m_in;
    answer b1 = {0};
    const cy_coap_opt *b1o = cy_coap_opt_find(m_in, CY_COAP_OPT_BLOCK1);
    if (b1o) {
        if (block1(ep, m_in, b1o, &whole, &b1)) {
            respond(ep, m_in, &b1);
            return;
        }
        m = &whole;
    }
    size_t flen;
    const char *first = first_segment(m, &flen);
    char rest[PATH_MAX_BYTES + 1];
    answer an = refused(CY_COAP_NOT_FOUND, "no such resource: see docs/device-protocol.md");
    bool sub_fresh = false, subscribed = false;
    uint8_t sub_qos = 0;
    int rl;
    char topic[PATH_MAX_BYTES + 64];
    if (flen == 1 && first[0] == 'e') { /* an event of the device */
        if (m->code != CY_COAP_POST) {
            an = refused(CY_COAP_METHOD_NOT_ALLOWED, "POST an event");
        } else if ((rl = rest_of_path(m, rest, sizeof(rest), false)) <= 0) {
            an = refused(CY_COAP_BAD_REQUEST, "name the event: /e/<name>");
        } else {
            int n = snprintf(topic, sizeof(topic), "devices/%s/events/%s", ep->id, rest);
            an = publish(ep, m, topic, (size_t)n, false);
        }
    } else if (flen == 1 && first[0] == 't') { /* a publish on a topic */
        if (m->code != CY_COAP_POST)
            an = refused(CY_COAP_METHOD_NOT_ALLOWED, "POST a message");
        else if ((rl = rest_of_path(m, rest, sizeof(rest), false)) <= 0)
            an = refused(CY_COAP_BAD_REQUEST, "name the topic: /t/<topic>");
        else
            an = publish(ep, m, rest, (size_t)rl, false);
    } else if (flen == 1 && first[0] == 'd') { /* its describe */
        if (m->code != CY_COAP_PUT && m->code != CY_COAP_POST) {
            an = refused(CY_COAP_METHOD_NOT_ALLOWED, "PUT the describe");
        } else {
            int n = snprintf(topic, sizeof(topic), "devices/%s/describe", ep->id);
            an = publish(ep, m, topic, (size_t)n, true);
        }
    } else if (flen == 1 && first[0] == 's') { /* subscriptions */
        const cy_coap_opt *obs = cy_coap_opt_find(m, CY_COAP_OPT_OBSERVE);
        uint32_t ov = 2;
        if (obs && cy_coap_opt_uint(obs, &ov)) ov = 2;
        bool filter = m->code != CY_COAP_GET || ov == 0 || ov == 1;
        rl = rest_of_path(m, rest, sizeof(rest), filter);
        if (rl <= 0) {
            an = refused(CY_COAP_BAD_REQUEST, "name the topic filter: /s/<filter>");
        } else if (m->code == CY_COAP_POST || m->code == CY_COAP_PUT) {
            an = subscribe(ep, m, rest, (size_t)rl, 0, &sub_fresh, &sub_qos);
            subscribed = an.code == CY_COAP_CHANGED;
        } else if (m->code == CY_COAP_DELETE) {
            coap_obs *o = obs_find(ep, rest, (size_t)rl);
            if (o)
                obs_cancel(ep, o);
            else
                cy_session_unsubscribe(c->devices, ep->sess, rest, (size_t)rl);
            an = (answer){.code = CY_COAP_DELETED};
        } else if (ov == 0 && (an = observe(ep, m, rest, (size_t)rl)).code != 0) {
            /* registered, or refused */
        } else { /* GET (or an observation ended): the retained message of a topic */
            if (ov == 1) {
                coap_obs *o = obs_find(ep, rest, (size_t)rl);
                if (o) obs_cancel(ep, o);
            }
            bool name = cy_topic_valid_name(rest, (size_t)rl);
            cy_msg *r = name ? cy_router_retained(c->router, rest, (size_t)rl) : NULL;
            cy_who who;
            cy_session_who(ep->sess, &who);
            if (c->cfg->isolate_devices &&
                !cy_device_topic_ok(ep->id, ep->id_len, rest, (size_t)rl))
                an = refused(CY_COAP_FORBIDDEN, "a device reads within devices/<id>/ and events/");
            else if (name && !cy_device_acl(c->devices, &who, rest, (size_t)rl, CY_ACL_READ))
                an = refused(CY_COAP_FORBIDDEN, "denied by acl_file");
            else if (!r)
                an = refused(CY_COAP_NOT_FOUND, "no retained message");
            else
                an = (answer){
                    .code = CY_COAP_CONTENT, .payload = r->payload, .plen = r->payload_len};
        }
    }
    if (b1o) {
        an.has_block1 = true;
        an.block1 = b1.block1;
    }
    respond(ep, m_in, &an);
    if (b1o) block1_reset(ep);
    if (subscribed && sub_fresh)
        cy_session_send_retained(c->devices, ep->sess, rest, (size_t)rl, sub_qos, 0);
}

/* ---- a call's answer ---- */

static void answer_reset(coap_ep *ep)
{
    cy_free(ep->ans.buf);
    memset(&ep->ans, 0, sizeof(ep->ans));
}

static void call_failed(coap_ep *ep, const char *rid, const char *why)
{
    if (!strcmp(ep->ans.rid, rid)) answer_reset(ep);
    if (ep->sess) cy_device_reply_error(ep->c->devices, ep->sess, rid, strlen(rid), why);
}

/* The request req (as we sent it) again, asking for Block2 block num of
 * size szx: same token (some devices keep the blocks of an answer by it). */
static coap_out *next_block(coap_ep *ep, const uint8_t *req, size_t len, uint32_t num, uint8_t szx,
                            const char *rid)
{
    cy_coap_msg m;
    if (cy_coap_decode(req, len, &m)) return NULL;
    size_t cap = ep->c->cfg->coap_max_message;
    int err;
    coap_out *o = out_new(ep, &err);
    if (!o) return NULL;
    o->kind = OUT_CALL;
    snprintf(o->rid, sizeof(o->rid), "%s", rid);
    o->tkl = m.tkl;
    memcpy(o->token, m.token, m.tkl);
    cy_coap_block b = {num, false, szx};
    cy_coap_writer w;
    cy_coap_w_init(&w, o->bytes, cap, CY_COAP_CON, m.code, 0, m.token, m.tkl);
    bool put = false;
    for (unsigned i = 0; i < m.n_opts; i++) {
        if (!put && m.opts[i].num > CY_COAP_OPT_BLOCK2) {
            cy_coap_w_opt_uint(&w, CY_COAP_OPT_BLOCK2, cy_coap_block_value(&b));
            put = true;
        }
        if (m.opts[i].num != CY_COAP_OPT_BLOCK2)
            cy_coap_w_opt(&w, m.opts[i].num, m.opts[i].val, m.opts[i].len);
    }
    if (!put) cy_coap_w_opt_uint(&w, CY_COAP_OPT_BLOCK2, cy_coap_block_value(&b));
    cy_coap_w_payload(&w, m.payload, m.payload_len);
    return out_end(o, &w, &err);
}

/* The device's answer m (piggybacked or separate) to our call rid, whose
 * request was req: a 2.xx is its value, put together from Block2 blocks
 * first (the next block asked for with the same token, ahead of anything
 * queued); any other code is a refusal, 502 for the caller. */
static void call_response(coap_ep *ep, const char *rid, const cy_coap_msg *m, const uint8_t *req,
                          size_t req_len)
{
    if (!ep->sess) return;
    if (CY_COAP_CLASS(m->code) != 2) {
        char why[128], ct[8], diag[65];
        size_t n = m->payload_len < 64 ? m->payload_len : 64;
        for (size_t i = 0; i < n; i++) /* a diagnostic payload, for people: printable */
            diag[i] = m->payload[i] >= 0x20 && m->payload[i] < 0x7f ? (char)m->payload[i] : '?';
        diag[n] = '\0';
        snprintf(why, sizeof(why), "the device answered %s%s%s", cy_coap_code_text(m->code, ct),
                 n ? ": " : "", diag);
        call_failed(ep, rid, why);
        return;
    }
    const cy_coap_opt *bo = cy_coap_opt_find(m, CY_COAP_OPT_BLOCK2);
    cy_coap_block b;
    if (!bo || cy_coap_block_decode(bo, &b) || (b.num == 0 && !b.more)) {
        if (!strcmp(ep->ans.rid, rid)) answer_reset(ep);
        cy_device_reply(ep->c->devices, ep->sess, rid, strlen(rid), m->payload, m->payload_len);
        return;
    }
    if (b.num == 0) {
        answer_reset(ep);
        snprintf(ep->ans.rid, sizeof(ep->ans.rid), "%s", rid);
    } else if (strcmp(ep->ans.rid, rid) || b.num != ep->ans.next) {
        call_failed(ep, rid, "the device's answer came in blocks out of order");
        return;
    }
    if (ep->ans.len + m->payload_len > CY_DEVICE_REPLY_MAX) {
        call_failed(ep, rid, "the device's answer is over 64 KiB");
        return;
    }
    uint8_t *nb = cy_realloc(ep->ans.buf, ep->ans.len + m->payload_len + 1);
    if (!nb) {
        call_failed(ep, rid, "out of memory");
        return;
    }
    ep->ans.buf = nb;
    if (m->payload_len) memcpy(nb + ep->ans.len, m->payload, m->payload_len);
    ep->ans.len += m->payload_len;
    ep->ans.next = b.num + 1;
    if (!b.more) {
        cy_device_reply(ep->c->devices, ep->sess, rid, strlen(rid), ep->ans.buf, ep->ans.len);
        answer_reset(ep);
        return;
    }
    coap_out *o = req ? next_block(ep, req, req_len, b.num + 1, b.szx, rid) : NULL;
    if (!o) {
        call_failed(ep, rid, "cannot ask the device for the rest of its answer");
        return;
    }
    o->next = ep->q_head; /* first in line */
    ep->q_head = o;
    if (!ep->q_tail) ep->q_tail = o;
    ep->n_q++;
    send_next(ep);
}

static void on_ack(coap_ep *ep, const cy_coap_msg *m)
{
    cy_coap *c = ep->c;
    coap_out *o = ep->inflight;
    if (!o || m->mid != ep->inflight_mid) return; /* late or repeated */
    ep->inflight = NULL;
    busy_unlink(c, ep);
    c->progress++;
    if (o->kind == OUT_DELIVERY && ep->sess) {
        /* ACK: received. RST: the device refused it; either way its flow ends. */
        cy_delivery *dv = cy_session_find_inflight(ep->sess, o->pkt_id);
        if (dv) {
            cy_session_remove_delivery(c->devices, ep->sess, dv);
            cy_session_pump(c->devices, ep->sess);
        }
        /* A RST to a notification: the device no longer observes (RFC 7641 3.6). */
        if (m->type == CY_COAP_RST && o->obs >= 0) obs_cancel(ep, &ep->obs[o->obs]);
    } else if (o->kind == OUT_CALL && m->type == CY_COAP_RST) {
        call_failed(ep, o->rid, "the device refused the request (RST)");
    } else if (o->kind == OUT_CALL) {
        ep->inflight = NULL;
        if (m->code != CY_COAP_EMPTY) {
            call_response(ep, o->rid, m, o->bytes, o->len);
        } else { /* the answer comes separately */
            coap_wait *w = NULL;
            int64_t now = now_ms(c);
            for (unsigned i = 0; i < COAP_WAITS_MAX && !w; i++)
                if (!ep->waits[i].until || ep->waits[i].until < now) w = &ep->waits[i];
            if (w) {
                cy_free(w->req);
                w->req = cy_malloc(o->len);
                w->req_len = w->req ? o->len : 0;
                if (w->req) memcpy(w->req, o->bytes, o->len);
                w->until = now + COAP_WAIT_MS;
                w->tkl = o->tkl;
                memcpy(w->token, o->token, o->tkl);
                memcpy(w->rid, o->rid, sizeof(w->rid));
            }
        }
    }
    cy_free(o);
    send_next(ep);
}

/* A separate response to one of our calls (its token). It may overtake
 * the empty ACK of the request (RFC 7252 5.2.2: it then acknowledges the
 * request as well); with several shards the two may even come through
 * different ones, whose bus links do not keep their order. Then the call
 * in flight takes it, and the ACK that follows is ignored as late. */
static void on_response(coap_ep *ep, const cy_coap_msg *m)
{
    int64_t now = now_ms(ep->c);
    bool matched = false;
    for (unsigned i = 0; i < COAP_WAITS_MAX && !matched; i++) {
        coap_wait *w = &ep->waits[i];
        if (w->until >= now && w->tkl == m->tkl && !memcmp(w->token, m->token, m->tkl)) {
            w->until = 0;
            char rid[17];
            memcpy(rid, w->rid, sizeof(rid));
            uint8_t *req = w->req;
            size_t req_len = w->req_len;
            w->req = NULL;
            call_response(ep, rid, m, req, req_len);
            cy_free(req);
            matched = true;
        }
    }
    coap_out *o = ep->inflight;
    bool overtook = !matched && o && o->kind == OUT_CALL && o->tkl == m->tkl &&
                    !memcmp(o->token, m->token, m->tkl);
    if (overtook) {
        ep->inflight = NULL;
        busy_unlink(ep->c, ep);
        ep->c->progress++;
        call_response(ep, o->rid, m, o->bytes, o->len);
        cy_free(o);
    }
    if (m->type == CY_COAP_CON) {
        uint8_t b[CY_COAP_HEADER];
        reply(ep, m->mid, b, cy_coap_empty(b, CY_COAP_ACK, m->mid));
    } else {
        reply(ep, m->mid, NULL, 0);
    }
    if (overtook) send_next(ep);
}

/* Does device id exist (plain requests name one; DTLS authenticated it)? */
static bool device_exists(cy_coap *c, const char *id, size_t id_len)
{
    char buf[CY_MAX_CLIENT_ID + 1];
    if (id_len > CY_MAX_CLIENT_ID || memchr(id, 0, id_len)) return false;
    memcpy(buf, id, id_len);
    buf[id_len] = '\0';
    cy_device dev;
    return cy_registry_device_get(c->registry, buf, &dev) == 0 && !strcmp(dev.id, buf);
}

void coap_ep_input(cy_coap *c, const char *id, size_t id_len, uint8_t via, uint8_t term,
                   const coap_addr *a, const cy_coap_msg *m, const uint8_t *raw, size_t rawlen)
{
    (void)raw;
    if (c->stopping) return;
    c->progress++;
    coap_ep *ep = id_len ? ep_find(c, id, id_len) : ep_by_addr(c, a);
    /* Coming online: the device must (still) exist; a deleted one's DTLS
     * session may outlive it until it idles out. */
    if ((!ep || !ep->online) && id_len && !device_exists(c, id, id_len)) {
        c->stats->coap_dropped++;
        coap_answer_error(c, via, term, a, m, CY_COAP_UNAUTHORIZED, "unknown device");
        return;
    }
    if (!ep && id_len) {
        ep = ep_new(c, id, id_len);
        if (!ep) {
            coap_answer_error(c, via, term, a, m, CY_COAP_UNAVAILABLE, "out of memory");
            return;
        }
    }
    if (!ep) { /* an ACK, RST, ping or response from an address we do not know */
        c->stats->coap_dropped++;
        if (m->type == CY_COAP_CON) {
            uint8_t b[CY_COAP_HEADER];
            coap_output(c, via, term, a, b, cy_coap_empty(b, CY_COAP_RST, m->mid));
        }
        return;
    }
    /* A plain ACK, RST or response from another address than the device's
     * is not the device's (a stranger guessing ids). */
    if (!id_len && (!ep->online || !coap_addr_eq(&ep->addr, a))) return;
    heard(ep, via, term, a);
    if (!ep->online) return; /* could not attach (out of memory) */
    if (m->type == CY_COAP_ACK || m->type == CY_COAP_RST) {
        on_ack(ep, m);
        return;
    }
    if (m->code == CY_COAP_EMPTY) { /* a ping (an empty NON was dropped by the front) */
        uint8_t b[CY_COAP_HEADER];
        send_raw(ep, b, cy_coap_empty(b, CY_COAP_RST, m->mid));
        return;
    }
    int64_t now = now_ms(c);
    coap_seen *s = seen_find(ep, m->mid, now);
    if (s) { /* a duplicate: the same answer again, nothing done twice */
        if (m->type == CY_COAP_CON && s->len) send_raw(ep, s->resp, s->len);
        return;
    }
    ep->req_len = rawlen;
    if (CY_COAP_CLASS(m->code) == 0)
        request(ep, m);
    else
        on_response(ep, m);
}

void coap_ep_closed(cy_coap *c, const char *id, size_t id_len, uint8_t term, const coap_addr *a)
{
    coap_ep *ep = ep_find(c, id, id_len);
    if (ep && ep->online && ep->via == COAP_VIA_DTLS && ep->term == term &&
        coap_addr_eq(&ep->addr, a))
        go_offline(ep, "its DTLS session ended", CY_PRESENCE_CONNECTION_LOST);
}

void coap_ep_tick(cy_coap *c, int64_t now)
{
    coap_ep *next;
    for (coap_ep *ep = c->busy; ep; ep = next) {
        next = ep->busy_next;
        if (!ep->inflight || now < ep->retx_at) continue;
        if (ep->retx_n >= COAP_MAX_RETRANSMIT) {
            go_offline(ep, "no acknowledgement from the device", CY_PRESENCE_CONNECTION_LOST);
            continue;
        }
        ep->retx_n++;
        ep->retx_ms *= 2;
        ep->retx_at = now + ep->retx_ms;
        c->stats->coap_retransmissions++;
        c->progress++;
        send_raw(ep, ep->inflight->bytes, ep->inflight->len);
    }
}

/* Endpoints taken offline, or freed, per sweep at most (the rest next sweep). */
#define SWEEP_BATCH 1024

typedef struct sweep_ctx {
    cy_coap *c;
    int64_t now;
    coap_ep *idle[SWEEP_BATCH];
    const char *why[SWEEP_BATCH];
    cy_presence_reason reason[SWEEP_BATCH];
    unsigned n_idle;
    coap_ep *gone[SWEEP_BATCH];
    unsigned n_gone;
} sweep_ctx;

static void sweep_one(void *ctx, void *v)
{
    sweep_ctx *x = ctx;
    coap_ep *ep = v;
    int64_t idle_ms = (int64_t)x->c->cfg->coap_idle_timeout * 1000;
    /* Over DTLS, the session lives on its terminator shard: if that
     * process died (its link is down) or was replaced, the session is gone. */
    if (ep->online && ep->via == COAP_VIA_DTLS && ep->term != x->c->self &&
        x->n_idle < SWEEP_BATCH) {
        uint64_t gen = 0;
        if (!cy_cluster_peer_up(x->c->cluster, ep->term, &gen) || gen != ep->term_gen) {
            x->idle[x->n_idle] = ep;
            x->reason[x->n_idle] = CY_PRESENCE_CONNECTION_LOST;
            x->why[x->n_idle++] = "the shard holding its DTLS session stopped";
            return;
        }
    }
    /* A block-wise body abandoned half way is dropped after EXCHANGE_LIFETIME. */
    if (ep->blk.buf && x->now - ep->blk.at > COAP_SEEN_MS) block1_reset(ep);
    if (ep->online && x->now - ep->last_rx > idle_ms && x->n_idle < SWEEP_BATCH) {
        x->idle[x->n_idle] = ep;
        x->reason[x->n_idle] = CY_PRESENCE_KEEPALIVE_TIMEOUT;
        x->why[x->n_idle++] = "not heard for coap_idle_timeout";
    }
    /* An offline endpoint whose session ended holds nothing worth keeping. */
    if (!ep->online && x->n_gone < SWEEP_BATCH &&
        !cy_session_find(x->c->devices, ep->id, ep->id_len))
        x->gone[x->n_gone++] = ep;
}

void coap_ep_sweep(cy_coap *c, int64_t now)
{
    sweep_ctx x = {.c = c, .now = now};
    cy_map_each(&c->eps, sweep_one, &x);
    for (unsigned i = 0; i < x.n_idle; i++)
        go_offline(x.idle[i], x.why[i], x.reason[i]);
    for (unsigned i = 0; i < x.n_gone; i++)
        ep_free(c, x.gone[i]);
}

typedef struct all_ctx {
    coap_ep **v;
    size_t n;
} all_ctx;

static void collect(void *ctx, void *v)
{
    all_ctx *a = ctx;
    a->v[a->n++] = v;
}

void coap_ep_free_all(cy_coap *c, bool offline)
{
    size_t n = c->eps.count;
    if (!n) return;
    all_ctx a = {cy_malloc(n * sizeof(coap_ep *)), 0};
    if (!a.v) return;
    cy_map_each(&c->eps, collect, &a);
    for (size_t i = 0; i < a.n; i++) {
        if (offline) go_offline(a.v[i], "shutting down", CY_PRESENCE_SHUTDOWN);
        ep_free(c, a.v[i]);
    }
    cy_free(a.v);
}

uint64_t coap_ep_owed(const cy_coap *c, int64_t now)
{
    uint64_t owed = 0;
    /* A retransmission more than a sweep late: the tick did not run. */
    for (const coap_ep *ep = c->busy; ep; ep = ep->busy_next)
        if (ep->inflight && now - ep->retx_at > 1000) owed++;
    return owed;
}
