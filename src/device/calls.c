/* calls: operations on a device, run by the shard that owns it.
 *
 * A requester (the HTTP API on any shard) asks the owner shard for an
 * operation (cy_device_op): a device's presence, every device's presence,
 * a function call, a variable read, or ending a deleted device's session.
 * A call or read goes to the device through its link (link.h: the
 * transport's own form of it) with a request id; the device's reply comes
 * back through cy_device_reply. Every operation ends in exactly one answer
 * to its requester, through the answer function: the reply, 404/409 at
 * once, 502 for an oversized reply, or 504 at the deadline.
 */
#include "device/device_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void answer(cy_devices *d, unsigned from, uint32_t req_id, unsigned status, json_t *body)
{
    d->progress++;
    /* 15 significant digits: a device's number comes back as it sent it
     * (123456.78, not 123457), without binary noise (0.1, not 0.1000...01). */
    char *text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(body);
    if (d->answer)
        d->answer(d->answer_ctx, from, req_id, text ? status : 500, text ? text : "{}",
                  text ? strlen(text) : 2);
    free(text);
}

static void answer_error(cy_devices *d, unsigned from, uint32_t req_id, unsigned status,
                         const char *code, const char *msg)
{
    answer(d, from, req_id, status, json_pack("{s:s, s:s}", "error", code, "message", msg));
}

static void call_unlink(cy_devices *d, dev_call *k)
{
    if (k->prev)
        k->prev->next = k->next;
    else
        d->calls = k->next;
    if (k->next) k->next->prev = k->prev;
    cy_map_del(&d->calls_by_rid, k->rid, 16);
    cy_free(k);
}

static bool described(cy_devices *d, const char *id, const char *key, const char *name)
{
    json_t *desc = cy_device_describe(d, id);
    json_t *list = cy_device_names(desc, key);
    json_decref(desc);
    bool found = false;
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), name) == 0) found = true;
    }
    json_decref(list);
    return found;
}

static void start_call(cy_devices *d, unsigned from, uint32_t req_id, uint8_t op, const char *id,
                       const char *name, const uint8_t *arg, size_t arg_len, uint32_t timeout_ms)
{
    dev_presence *pr = cy_presence_get(d, id, strlen(id), false);
    const char *kind = op == CY_DEVICE_OP_CALL ? "function" : "variable";
    if (!described(d, id, op == CY_DEVICE_OP_CALL ? "functions" : "variables", name)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "device %s has not described a %s named %s", id, kind, name);
        answer_error(d, from, req_id, 404,
                     op == CY_DEVICE_OP_CALL ? "function_not_found" : "variable_not_found", msg);
        return;
    }
    if (!pr || !pr->link || !pr->link->ops->call) {
        char msg[96];
        snprintf(msg, sizeof(msg), "device %s is not connected", id);
        answer_error(d, from, req_id, 409, "device_offline", msg);
        return;
    }
    dev_call *k = cy_calloc(1, sizeof(*k));
    if (!k) {
        answer_error(d, from, req_id, 500, "internal", "out of memory");
        return;
    }
    k->op = op;
    k->from = from;
    k->req_id = req_id;
    snprintf(k->device, sizeof(k->device), "%s", id);
    snprintf(k->name, sizeof(k->name), "%s", name);
    snprintf(k->rid, sizeof(k->rid), "%016" PRIx64,
             (d->generation << 40) ^ ((uint64_t)d->self << 56) ^ ++d->next_rid);
    k->sent_us = cy_mono_us();
    k->deadline = cy_mono_ms() + timeout_ms;
    if (cy_map_put(&d->calls_by_rid, k->rid, 16, k)) {
        cy_free(k);
        answer_error(d, from, req_id, 500, "internal", "out of memory");
        return;
    }
    k->next = d->calls;
    if (d->calls) d->calls->prev = k;
    d->calls = k;
    d->stats->api_calls++;
    /* A call the link could not take is answered by the deadline. */
    pr->link->ops->call(pr->link, op == CY_DEVICE_OP_CALL ? "call" : "get", k->name, k->rid, arg,
                        arg_len);
}

/* A reply: the payload as JSON when it is exactly one JSON value, else
 * as a string (jansson refuses invalid UTF-8 there too: then "" with the
 * bytes lost is worse than an escaped copy, so such bytes are replaced). */
static json_t *reply_value(const uint8_t *p, size_t len)
{
    json_t *v = json_loadb((const char *)p, len, JSON_DECODE_ANY, NULL);
    if (v) return v;
    v = json_stringn((const char *)p, len);
    if (v) return v;
    char *copy = cy_malloc(len + 1);
    if (!copy) return json_string("");
    for (size_t i = 0; i < len; i++)
        copy[i] = p[i] < 0x80 ? (char)p[i] : '?';
    v = json_stringn(copy, len);
    cy_free(copy);
    return v ? v : json_string("");
}

static void finish_call(cy_devices *d, dev_call *k, const uint8_t *payload, size_t len)
{
    double ms = (double)(cy_mono_us() - k->sent_us) / 1000.0;
    dev_presence *pr = cy_presence_get(d, k->device, strlen(k->device), false);
    if (pr) pr->last_rtt = cy_wall_ms();
    json_t *body = json_pack("{s:s, s:s, s:o, s:f}", "id", k->device, "name", k->name,
                             k->op == CY_DEVICE_OP_CALL ? "return_value" : "value",
                             reply_value(payload, len), "round_trip_ms", ms);
    answer(d, k->from, k->req_id, 200, body);
    call_unlink(d, k);
}

void cy_device_reply(cy_devices *d, cy_session *s, const char *rid, size_t rid_len,
                     const uint8_t *payload, size_t len)
{
    dev_call *k = rid && rid_len == 16 ? cy_map_get(&d->calls_by_rid, rid, 16) : NULL;
    if (k && strcmp(k->device, s->client_id) != 0) k = NULL; /* only its own device answers */
    if (!k) {
        cy_debug(s->client_id, "reply to an unknown or answered request ignored");
        return;
    }
    if (len > CY_DEVICE_REPLY_MAX) {
        answer_error(d, k->from, k->req_id, 502, "reply_too_large",
                     "the device's reply is over 64 KiB");
        call_unlink(d, k);
        return;
    }
    finish_call(d, k, payload, len);
}

void cy_device_op(cy_devices *d, unsigned from, uint32_t req_id, uint8_t op, const char *id,
                  size_t id_len, const char *name, size_t name_len, const uint8_t *arg,
                  size_t arg_len, uint32_t timeout_ms)
{
    char dev[CY_DEVICE_ID_LEN + 1] = "";
    char nm[CY_DEVICE_NAME_MAX + 1] = "";
    if (id_len > CY_DEVICE_ID_LEN || name_len > CY_DEVICE_NAME_MAX || arg_len > CY_DEVICE_ARG_MAX) {
        answer_error(d, from, req_id, 400, "bad_request", "malformed request");
        return;
    }
    if (id_len) memcpy(dev, id, id_len);
    if (name_len) memcpy(nm, name, name_len);
    switch (op) {
    case CY_DEVICE_OP_PRESENCE:
        answer(d, from, req_id, 200, cy_device_presence(d, dev));
        return;
    case CY_DEVICE_OP_PRESENCE_ALL:
        answer(d, from, req_id, 200, cy_device_presence_all(d));
        return;
    case CY_DEVICE_OP_CALL:
    case CY_DEVICE_OP_GET:
        if (timeout_ms == 0) timeout_ms = CY_DEVICE_DEFAULT_TIMEOUT_MS;
        if (timeout_ms > CY_DEVICE_MAX_TIMEOUT_MS) timeout_ms = CY_DEVICE_MAX_TIMEOUT_MS;
        start_call(d, from, req_id, op, dev, nm, arg, arg_len, timeout_ms);
        return;
    case CY_DEVICE_OP_KICK:
        cy_device_kick(d, dev);
        answer(d, from, req_id, 200, json_pack("{s:s, s:b}", "id", dev, "deleted", 1));
        return;
    default:
        answer_error(d, from, req_id, 400, "bad_request", "unknown operation");
    }
}

void cy_calls_tick(cy_devices *d, int64_t now)
{
    for (dev_call *k = d->calls, *n; k; k = n) {
        n = k->next;
        if (now < k->deadline) continue;
        char msg[160];
        snprintf(msg, sizeof(msg), "device %s did not answer %s %s in time", k->device,
                 k->op == CY_DEVICE_OP_CALL ? "the call of" : "the read of", k->name);
        d->stats->api_call_timeouts++;
        answer_error(d, k->from, k->req_id, 504, "device_timeout", msg);
        call_unlink(d, k);
    }
}

uint64_t cy_calls_owed(const cy_devices *d, int64_t now)
{
    uint64_t n = 0;
    for (const dev_call *k = d->calls; k; k = k->next)
        if (now >= k->deadline) n++;
    return n;
}

void cy_calls_free(cy_devices *d)
{
    while (d->calls)
        call_unlink(d, d->calls);
    cy_map_fini(&d->calls_by_rid);
}

void cy_device_reply_error(cy_devices *d, cy_session *s, const char *rid, size_t rid_len,
                           const char *why)
{
    dev_call *k = rid && rid_len == 16 ? cy_map_get(&d->calls_by_rid, rid, 16) : NULL;
    if (k && strcmp(k->device, s->client_id) != 0) k = NULL; /* only its own device answers */
    if (!k) return;
    dev_presence *pr = cy_presence_get(d, k->device, strlen(k->device), false);
    if (pr) pr->last_rtt = cy_wall_ms(); /* it answered: a round trip all the same */
    answer_error(d, k->from, k->req_id, 502, "device_error", why);
    call_unlink(d, k);
}
