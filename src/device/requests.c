/* requests: running a device operation on its owner shard, from any shard.
 *
 * A request about a device is run by the shard that owns it (cy_shard_of).
 * The requester gives it an id, keeps it with a deadline, and sends it to
 * the owner as an API_REQ frame (or runs it here when it is the owner).
 * The owner answers with an API_RESP frame: a status and a JSON body
 * (calls.c makes them). The requester ends the request with 503 when the
 * owner is not healthy, at once or as soon as it is seen to stop (checked
 * on every tick), and when the owner does not answer by the caller's
 * deadline (the owner gives the device CY_DEVICE_OWNER_MARGIN_MS less, so
 * its 504 arrives in time): a hung shard never makes a caller wait longer
 * than it asked. Presence requests ask every healthy shard concerned and
 * end when all answered or the deadline passed; a shard that did not
 * answer is reported as such (NULL), not waited for.
 *
 * Frames (integers big endian):
 *   API_REQ:  u32 request id, u8 op, u32 timeout ms, u8 device id length,
 *             device id, u8 name length, name, argument (the rest)
 *   API_RESP: u32 request id, u16 status, JSON body (the rest)
 *
 * A cancelled request stays until its deadline, without a callback, so a
 * late answer finds it and is dropped.
 */
#include "device/device_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <stdio.h>
#include <string.h>

struct cy_device_request {
    struct cy_device_request *prev, *next;
    cy_devices *d;
    uint32_t id;
    uint8_t op;
    unsigned shard;          /* the owner (single-owner operations) */
    int64_t deadline;        /* mono ms */
    int64_t started_us;      /* mono us when it was asked (its latency's start) */
    uint64_t waiting;        /* shards whose answer is awaited */
    cy_device_done done;     /* NULL once cancelled */
    void *ctx;
    json_t *presence[CY_SB_MAX_SHARDS]; /* presence answers, by shard */
};

static bool is_presence(uint8_t op)
{
    return op == CY_DEVICE_OP_PRESENCE || op == CY_DEVICE_OP_PRESENCE_ALL;
}

static bool shard_ok(cy_devices *d, unsigned j, char *why, size_t whylen)
{
    return j == d->self || cy_cluster_shard_ready(d->cluster, j, why, whylen);
}

static void request_free(cy_devices *d, cy_device_request *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        d->requests = r->next;
    if (r->next) r->next->prev = r->prev;
    cy_map_del(&d->requests_by_id, &r->id, sizeof(r->id));
    for (unsigned j = 0; j < CY_SB_MAX_SHARDS; j++) json_decref(r->presence[j]);
    cy_free(r);
}

/* The one place a request's callback runs; the request is freed after.
 * A call or read is timed here, whatever its answer (the device's reply,
 * 404, 409 offline, 504, 503): the latency an application sees. One whose
 * caller left is timed too if its answer comes; one that gets none by the
 * deadline after its caller left is not (nobody waited for it). */
static void finish(cy_devices *d, cy_device_request *r, const cy_device_answer *a)
{
    if (r->op == CY_DEVICE_OP_CALL || r->op == CY_DEVICE_OP_GET) {
        int64_t now = cy_mono_us(), took = now - r->started_us;
        cy_hist_observe(d->hists, CY_HIST_DEVICE_CALL, took > 0 ? (uint64_t)took : 0, now / 1000);
    }
    cy_device_done done = r->done;
    r->done = NULL;
    d->progress++;
    if (done) done(r->ctx, a);
    request_free(d, r);
}

static void finish_unavailable(cy_devices *d, cy_device_request *r, const char *why)
{
    cy_device_answer a = {.status = 503, .why = why};
    finish(d, r, &a);
}

static void finish_presence(cy_devices *d, cy_device_request *r)
{
    cy_device_answer a = {.status = 200, .presence = r->presence};
    finish(d, r, &a);
}

/* The owner's answer (from shard `from`) to request id. */
static void complete(cy_devices *d, uint32_t id, unsigned from, unsigned status, const char *body,
                     size_t len)
{
    cy_device_request *r = cy_map_get(&d->requests_by_id, &id, sizeof(id));
    if (!r || from >= CY_SB_MAX_SHARDS || !(r->waiting & (UINT64_C(1) << from)))
        return; /* late: answered already */
    r->waiting &= ~(UINT64_C(1) << from);
    if (is_presence(r->op)) {
        if (status == 200) r->presence[from] = json_loadb(body, len, 0, NULL);
        if (!r->waiting) finish_presence(d, r);
        return;
    }
    cy_device_answer a = {.status = status, .body = body, .len = len};
    finish(d, r, &a);
}

/* The device layer's answer as the owner, to requester (from, req_id):
 * completed here, or sent back as an API_RESP frame. */
static void owner_answer(void *ctx, unsigned from, uint32_t req_id, unsigned status,
                         const char *body, size_t len)
{
    cy_devices *d = ctx;
    if (from == d->self) {
        complete(d, req_id, d->self, status, body, len);
        return;
    }
    uint8_t head[6] = {(uint8_t)(req_id >> 24), (uint8_t)(req_id >> 16), (uint8_t)(req_id >> 8),
                       (uint8_t)req_id, (uint8_t)(status >> 8), (uint8_t)status};
    if (cy_cluster_send(d->cluster, from, CY_FRAME_API_RESP, head, sizeof(head), body, len))
        cy_debug(NULL, "device: answer to shard %u lost (link down or full)", from);
}

void cy_requests_init_answer(cy_devices *d)
{
    d->answer = owner_answer;
    d->answer_ctx = d;
}

void cy_requests_init(cy_devices *d)
{
    cy_map_init(&d->requests_by_id);
    cy_buf_init(&d->frame);
    cy_requests_init_answer(d);
}

/* Send op to shard j for r (or run it here). */
static int send_op(cy_devices *d, cy_device_request *r, unsigned j, const char *id,
                   const char *name, const uint8_t *arg, size_t arg_len, uint32_t timeout_ms)
{
    size_t idl = strlen(id), nl = strlen(name);
    r->waiting |= UINT64_C(1) << j;
    if (j == d->self) {
        cy_device_op(d, d->self, r->id, r->op, id, idl, name, nl, arg, arg_len, timeout_ms);
        return 0;
    }
    cy_buf *f = &d->frame;
    cy_buf_reset(f);
    int rc = cy_buf_put_u32(f, r->id);
    rc = rc ? rc : cy_buf_put_u8(f, r->op);
    rc = rc ? rc : cy_buf_put_u32(f, timeout_ms);
    rc = rc ? rc : cy_buf_put_u8(f, (uint8_t)idl);
    rc = rc ? rc : cy_buf_append(f, id, idl);
    rc = rc ? rc : cy_buf_put_u8(f, (uint8_t)nl);
    rc = rc ? rc : cy_buf_append(f, name, nl);
    rc = rc ? rc
            : cy_cluster_send(d->cluster, j, CY_FRAME_API_REQ, cy_buf_head(f), cy_buf_size(f), arg,
                              arg_len);
    if (rc) r->waiting &= ~(UINT64_C(1) << j);
    return rc;
}

int cy_device_request_start(cy_devices *d, uint8_t op, const char *id, const char *name,
                            const uint8_t *arg, size_t arg_len, uint32_t timeout_ms,
                            cy_device_done done, void *ctx, cy_device_request **out)
{
    *out = NULL;
    if (!id) id = "";
    if (!name) name = "";
    if (strlen(id) > 255 || strlen(name) > 255) return CY_EINVAL;
    cy_device_request *r = cy_calloc(1, sizeof(*r));
    if (!r) return CY_ENOMEM;
    r->d = d;
    r->id = ++d->next_request;
    r->op = op;
    r->done = done;
    r->ctx = ctx;
    r->started_us = cy_mono_us();
    r->deadline = r->started_us / 1000 + timeout_ms;
    if (cy_map_put(&d->requests_by_id, &r->id, sizeof(r->id), r)) {
        cy_free(r);
        return CY_ENOMEM;
    }
    r->next = d->requests;
    if (d->requests) d->requests->prev = r;
    d->requests = r;
    *out = r;
    char why[96] = "";
    if (op == CY_DEVICE_OP_PRESENCE_ALL || op == CY_DEVICE_OP_PRESENCE) {
        unsigned owner = op == CY_DEVICE_OP_PRESENCE ? cy_shard_of(id, strlen(id), d->nshards) : 0;
        uint64_t ask = 0;
        for (unsigned j = 0; j < d->nshards; j++)
            if ((op == CY_DEVICE_OP_PRESENCE_ALL || j == owner) && shard_ok(d, j, why, sizeof(why)))
                ask |= UINT64_C(1) << j;
        /* The local shard answers at once, so it is asked last: its answer
         * may finish the request. Mark every shard first, so an early
         * answer does not finish it before the others are asked. */
        r->waiting = ask;
        for (unsigned j = 0; j < d->nshards; j++)
            if (j != d->self && (ask & (UINT64_C(1) << j)))
                send_op(d, r, j, id, "", NULL, 0, 0);
        if (ask & (UINT64_C(1) << d->self)) {
            uint32_t rid = r->id;
            send_op(d, r, d->self, id, "", NULL, 0, 0); /* may finish it */
            if (cy_map_get(&d->requests_by_id, &rid, sizeof(rid)) != r) *out = NULL;
        } else if (!r->waiting) {
            *out = NULL;
            finish_presence(d, r);
        }
        return 0;
    }
    unsigned owner = cy_shard_of(id, strlen(id), d->nshards);
    r->shard = owner;
    if (!shard_ok(d, owner, why, sizeof(why))) {
        *out = NULL;
        finish_unavailable(d, r, why);
        return 0;
    }
    uint32_t owner_ms = timeout_ms > CY_DEVICE_OWNER_MARGIN_MS ? timeout_ms - CY_DEVICE_OWNER_MARGIN_MS
                                                                : timeout_ms;
    uint32_t rid = r->id;
    if (send_op(d, r, owner, id, name, arg, arg_len, owner_ms)) {
        *out = NULL;
        finish_unavailable(d, r, "the bus to its shard is full or down");
        return 0;
    }
    /* The owner may be this shard and have answered already. */
    if (cy_map_get(&d->requests_by_id, &rid, sizeof(rid)) != r) *out = NULL;
    return 0;
}

void cy_device_request_cancel(cy_device_request *r)
{
    if (r) r->done = NULL;
}

void cy_requests_tick(cy_devices *d, int64_t now)
{
    for (cy_device_request *r = d->requests, *n; r; r = n) {
        n = r->next;
        if (!r->done) {
            if (now >= r->deadline) request_free(d, r);
            continue;
        }
        char why[96] = "";
        bool late = now >= r->deadline;
        if (is_presence(r->op)) {
            /* Shards that do not answer in time are reported unhealthy. */
            for (unsigned j = 0; j < d->nshards; j++)
                if ((r->waiting & (UINT64_C(1) << j)) && (late || !shard_ok(d, j, why, sizeof(why))))
                    r->waiting &= ~(UINT64_C(1) << j);
            if (!r->waiting) finish_presence(d, r);
            continue;
        }
        if (!late && shard_ok(d, r->shard, why, sizeof(why))) continue;
        if (late) snprintf(why, sizeof(why), "shard %u did not answer in time", r->shard);
        finish_unavailable(d, r, why);
    }
}

void cy_devices_on_frame(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len)
{
    cy_devices *d = ctx;
    cy_reader r = cy_reader_of(body, len);
    uint32_t id = (uint32_t)cy_reader_be(&r, 4);
    if (type == CY_FRAME_API_RESP) {
        unsigned status = (unsigned)cy_reader_be(&r, 2);
        if (!r.bad) complete(d, id, from, status, (const char *)r.p, cy_reader_left(&r));
        return;
    }
    uint8_t op = (uint8_t)cy_reader_be(&r, 1);
    uint32_t timeout = (uint32_t)cy_reader_be(&r, 4);
    size_t idl = (size_t)cy_reader_be(&r, 1);
    const char *dev = (const char *)cy_reader_take(&r, idl);
    size_t nl = (size_t)cy_reader_be(&r, 1);
    const char *name = (const char *)cy_reader_take(&r, nl);
    if (r.bad) {
        cy_warn(NULL, "bus: malformed device request from shard %u ignored", from);
        return;
    }
    cy_device_op(d, from, id, op, dev, idl, name, nl, r.p, cy_reader_left(&r), timeout);
}

uint64_t cy_requests_owed(const cy_devices *d, int64_t now)
{
    uint64_t n = 0;
    for (const cy_device_request *r = d->requests; r; r = r->next)
        if (r->done && now >= r->deadline) n++; /* a cancelled one owes nobody */
    return n;
}

void cy_requests_free(cy_devices *d)
{
    while (d->requests) request_free(d, d->requests);
    cy_map_fini(&d->requests_by_id);
    cy_buf_fini(&d->frame);
}
