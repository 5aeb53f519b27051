/* api_device: the owner shard's side of the device convention
 * (docs/device-protocol.md).
 *
 * A device's own space is "devices/<id>/..." and the shared event space is
 * "events/..."; an isolated device may use nothing else. Three topics of its
 * own space mean something to cyan:
 *   devices/<id>/describe      its functions and variables (JSON), kept as
 *                              a retained message, so every shard can list
 *                              them without asking the owner;
 *   devices/<id>/reply[/<rid>] the answer to a call or read cyan sent on
 *                              devices/<id>/call|get/<name>[/<rid>]; the
 *                              request id is the last topic level (3.1.1)
 *                              or the Correlation Data (5.0);
 *   devices/<id>/events/...    events (routed like any publish; the API's
 *                              event filters pick them up, see route.c).
 *
 * The owner keeps a presence record per device since it started, and the
 * calls in flight with their deadlines. Every operation ends in exactly one
 * answer to its requester: the reply, 404/409 at once, or 504 at the
 * deadline.
 */
#include "broker/api_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- topic spaces ---- */

static bool has_prefix(const char *t, size_t len, const char *p, size_t plen)
{
    return len > plen && memcmp(t, p, plen) == 0;
}

/* Does t start with "devices/<id>/" and go on after it? */
static bool own_space(const char *id, size_t idl, const char *t, size_t len)
{
    return has_prefix(t, len, "devices/", 8) && len > 8 + idl + 1 &&
           memcmp(t + 8, id, idl) == 0 && t[8 + idl] == '/';
}

bool cy_device_topic_ok(const char *id, size_t id_len, const char *t, size_t len)
{
    return has_prefix(t, len, "events/", 7) || (id && own_space(id, id_len, t, len));
}

bool cy_device_is_reply(const char *id, size_t id_len, const char *t, size_t len)
{
    if (!own_space(id, id_len, t, len)) return false;
    const char *rest = t + 8 + id_len + 1;
    size_t rlen = len - (8 + id_len + 1);
    return rlen >= 5 && memcmp(rest, "reply", 5) == 0 && (rlen == 5 || rest[5] == '/');
}

static bool is_describe(const char *id, size_t id_len, const char *t, size_t len)
{
    return own_space(id, id_len, t, len) && len - (8 + id_len + 1) == 8 &&
           memcmp(t + 8 + id_len + 1, "describe", 8) == 0;
}

/* ---- describe ---- */

static bool valid_name(const char *n, size_t len)
{
    if (len == 0 || len > API_NAME_MAX) return false;
    for (size_t i = 0; i < len; i++) {
        char ch = n[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-' || ch == '.'))
            return false;
    }
    return true;
}

static bool valid_names(json_t *arr)
{
    if (!arr) return true;
    if (!json_is_array(arr) || json_array_size(arr) > API_DESCRIBE_NAMES) return false;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (!json_is_string(v) || !valid_name(json_string_value(v), json_string_length(v)))
            return false;
    }
    return true;
}

bool cy_device_describe_ok(const uint8_t *p, size_t len)
{
    if (len > API_DESCRIBE_MAX) return false;
    json_t *d = json_loadb((const char *)p, len, JSON_REJECT_DUPLICATES, NULL);
    bool ok = d && json_is_object(d) && valid_names(json_object_get(d, "functions")) &&
              valid_names(json_object_get(d, "variables"));
    json_decref(d);
    return ok;
}

/* ---- presence ---- */

static api_presence *presence_get(cy_api *a, const char *id, size_t len, bool create)
{
    api_presence *pr = cy_map_get(&a->presence, id, len);
    if (pr || !create || len > CY_DEVICE_ID_LEN) return pr;
    pr = cy_calloc(1, sizeof(*pr));
    if (!pr) return NULL;
    memcpy(pr->id, id, len);
    if (cy_map_put(&a->presence, pr->id, len, pr)) {
        cy_free(pr);
        return NULL;
    }
    return pr;
}

static int64_t wall_of_mono(cy_broker *b, int64_t mono_ms)
{
    return cy_wall_ms() - ((int64_t)uv_now(b->loop) - mono_ms);
}

void cy_api_device_online(cy_broker *b, cy_conn *c)
{
    if (!b->api || !c->sess) return;
    api_presence *pr = presence_get(b->api, c->sess->client_id, c->sess->client_id_len, true);
    if (!pr) return;
    pr->conn = c;
    pr->connected_since = cy_wall_ms();
    pr->last_heard = pr->connected_since;
    pr->version = c->version;
}

void cy_api_device_offline(cy_broker *b, cy_conn *c)
{
    if (!b->api || !c->sess) return;
    api_presence *pr = presence_get(b->api, c->sess->client_id, c->sess->client_id_len, false);
    if (!pr || pr->conn != c) return;
    pr->conn = NULL;
    pr->connected_since = 0;
    pr->last_heard = wall_of_mono(b, c->last_rx);
}

static json_t *presence_json(cy_broker *b, const api_presence *pr)
{
    bool online = pr && pr->conn;
    int64_t heard = !pr ? 0 : online ? wall_of_mono(b, pr->conn->last_rx) : pr->last_heard;
    const char *proto = !online ? NULL : pr->version == CY_MQTT_V5 ? "mqtt5" : "mqtt3.1.1";
    return json_pack("{s:b, s:o, s:o, s:o, s:o}", "online", online, "protocol",
                     proto ? json_string(proto) : json_null(), "connected_since",
                     cy_api_time(online ? pr->connected_since : 0), "last_heard",
                     cy_api_time(heard), "last_round_trip", cy_api_time(pr ? pr->last_rtt : 0));
}

/* ---- answers ---- */

static void answer(cy_broker *b, unsigned from, uint32_t req_id, unsigned status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(body);
    size_t len = text ? strlen(text) : 0;
    if (from == b->self) {
        cy_api_complete(b, req_id, b->self, text ? status : 500, text ? text : "{}",
                        text ? len : 2);
    } else {
        cy_buf *f = &b->api->out;
        cy_buf_reset(f);
        int rc = cy_buf_put_u32(f, req_id);
        rc = rc ? rc : cy_buf_put_u16(f, (uint16_t)status);
        if (rc || cy_cluster_send(b->cluster, from, CY_FRAME_API_RESP, cy_buf_head(f), cy_buf_size(f),
                                      text, len))
            cy_debug(NULL, "api: answer to shard %u lost (link down or full)", from);
    }
    free(text);
}

static void answer_error(cy_broker *b, unsigned from, uint32_t req_id, unsigned status,
                         const char *code, const char *msg)
{
    answer(b, from, req_id, status, json_pack("{s:s, s:s}", "error", code, "message", msg));
}

/* ---- calls ---- */

static void call_unlink(cy_api *a, api_call *k)
{
    if (k->prev)
        k->prev->next = k->next;
    else
        a->calls = k->next;
    if (k->next) k->next->prev = k->prev;
    cy_map_del(&a->calls_by_rid, k->rid, 16);
    cy_free(k);
}

static bool described(cy_broker *b, const char *id, const char *key, const char *name)
{
    json_t *desc = cy_api_describe(b, id);
    json_t *list = cy_api_names(desc, key);
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

static void send_call(cy_broker *b, api_call *k, api_presence *pr, const uint8_t *arg,
                      size_t arg_len)
{
    char topic[8 + CY_DEVICE_ID_LEN + 6 + API_NAME_MAX + 18 + 1];
    const char *verb = k->op == API_OP_CALL ? "call" : "get";
    cy_mqtt_props props;
    memset(&props, 0, sizeof(props));
    char reply[8 + CY_DEVICE_ID_LEN + 7];
    uint8_t version = pr->version;
    if (version == CY_MQTT_V5) {
        snprintf(topic, sizeof(topic), "devices/%s/%s/%s", k->device, verb, k->name);
        snprintf(reply, sizeof(reply), "devices/%s/reply", k->device);
        props.present = CY_PBIT(CY_PROP_RESPONSE_TOPIC) | CY_PBIT(CY_PROP_CORRELATION_DATA);
        props.response_topic = (cy_str){reply, (uint32_t)strlen(reply)};
        props.correlation_data = (cy_str){k->rid, 16};
    } else {
        snprintf(topic, sizeof(topic), "devices/%s/%s/%s/%s", k->device, verb, k->name, k->rid);
    }
    cy_str t = {topic, (uint32_t)strlen(topic)};
    cy_msg *m = cy_msg_from_publish(&t, arg, arg_len, &props, 1, false, version, &b->scratch);
    if (!m) return; /* the deadline answers */
    cy_router_publish(b->router, m, NULL, NULL, false);
    cy_msg_unref(m);
}

static void start_call(cy_broker *b, unsigned from, uint32_t req_id, uint8_t op, const char *id,
                       const char *name, const uint8_t *arg, size_t arg_len, uint32_t timeout_ms)
{
    cy_api *a = b->api;
    api_presence *pr = presence_get(a, id, strlen(id), false);
    const char *kind = op == API_OP_CALL ? "function" : "variable";
    if (!described(b, id, op == API_OP_CALL ? "functions" : "variables", name)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "device %s has not described a %s named %s", id, kind, name);
        answer_error(b, from, req_id, 404,
                     op == API_OP_CALL ? "function_not_found" : "variable_not_found", msg);
        return;
    }
    if (!pr || !pr->conn) {
        char msg[96];
        snprintf(msg, sizeof(msg), "device %s is not connected", id);
        answer_error(b, from, req_id, 409, "device_offline", msg);
        return;
    }
    api_call *k = cy_calloc(1, sizeof(*k));
    if (!k) {
        answer_error(b, from, req_id, 500, "internal", "out of memory");
        return;
    }
    k->op = op;
    k->from = from;
    k->req_id = req_id;
    snprintf(k->device, sizeof(k->device), "%s", id);
    snprintf(k->name, sizeof(k->name), "%s", name);
    snprintf(k->rid, sizeof(k->rid), "%016" PRIx64,
             (b->generation << 40) ^ ((uint64_t)b->self << 56) ^ ++a->next_rid);
    k->sent_us = cy_mono_us();
    k->deadline = cy_mono_ms() + timeout_ms;
    if (cy_map_put(&a->calls_by_rid, k->rid, 16, k)) {
        cy_free(k);
        answer_error(b, from, req_id, 500, "internal", "out of memory");
        return;
    }
    k->next = a->calls;
    if (a->calls) a->calls->prev = k;
    a->calls = k;
    b->stats.api_calls++;
    send_call(b, k, pr, arg, arg_len);
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
    for (size_t i = 0; i < len; i++) copy[i] = p[i] < 0x80 ? (char)p[i] : '?';
    v = json_stringn(copy, len);
    cy_free(copy);
    return v ? v : json_string("");
}

static void finish_call(cy_broker *b, api_call *k, const uint8_t *payload, size_t len)
{
    cy_api *a = b->api;
    double ms = (double)(cy_mono_us() - k->sent_us) / 1000.0;
    api_presence *pr = presence_get(a, k->device, strlen(k->device), false);
    if (pr) pr->last_rtt = cy_wall_ms();
    json_t *body = json_pack("{s:s, s:s, s:o, s:f}", "id", k->device, "name", k->name,
                             k->op == API_OP_CALL ? "return_value" : "value",
                             reply_value(payload, len), "round_trip_ms", ms);
    answer(b, k->from, k->req_id, 200, body);
    call_unlink(a, k);
}

static api_call *find_call(cy_api *a, const char *device, const char *rid, size_t rlen)
{
    api_call *k = rlen == 16 ? cy_map_get(&a->calls_by_rid, rid, 16) : NULL;
    return k && strcmp(k->device, device) == 0 ? k : NULL; /* only its own device answers */
}

void cy_device_reply(cy_conn *c, const cy_mqtt_publish *p)
{
    cy_broker *b = c->b;
    cy_session *s = c->sess;
    if (!b->api) return;
    const char *rest = p->topic.p + 8 + s->client_id_len + 1;
    size_t rlen = p->topic.len - (8 + s->client_id_len + 1);
    const char *rid = NULL;
    size_t ridlen = 0;
    if (rlen > 6) {
        rid = rest + 6;
        ridlen = rlen - 6;
    } else if (p->props.present & CY_PBIT(CY_PROP_CORRELATION_DATA)) {
        rid = p->props.correlation_data.p;
        ridlen = p->props.correlation_data.len;
    }
    api_call *k = rid ? find_call(b->api, s->client_id, rid, ridlen) : NULL;
    if (!k) {
        cy_debug(s->client_id, "reply to an unknown or answered request ignored");
        return;
    }
    if (p->payload_len > API_REPLY_MAX) {
        answer_error(b, k->from, k->req_id, 502, "reply_too_large",
                     "the device's reply is over 64 KiB");
        call_unlink(b->api, k);
        return;
    }
    finish_call(b, k, p->payload, p->payload_len);
}

int cy_publish_admit(cy_broker *b, const char *device_id, size_t id_len, const char *topic,
                     size_t len, const uint8_t *payload, size_t plen, bool *retain, bool *reply,
                     const char **why)
{
    *reply = false;
    if (len > b->cfg->max_topic_length) {
        b->stats.limit_topic_too_long++;
        *why = "topic over max_topic_length";
        return CY_RC_TOPIC_NAME_INVALID;
    }
    if (len && topic[0] == '$') {
        *why = "topic in a reserved $ space";
        return CY_RC_NOT_AUTHORIZED;
    }
    if (!device_id) return 0;
    if (!cy_device_topic_ok(device_id, id_len, topic, len)) {
        b->stats.acl_denied++;
        *why = "topic outside the device's spaces";
        return CY_RC_NOT_AUTHORIZED;
    }
    if (is_describe(device_id, id_len, topic, len)) {
        if (plen && !cy_device_describe_ok(payload, plen)) {
            *why = "describe is not {\"functions\": [names], \"variables\": [names]} "
                   "within the limits";
            return CY_RC_PAYLOAD_FORMAT_INVALID;
        }
        *retain = true;
        return 0;
    }
    *reply = cy_device_is_reply(device_id, id_len, topic, len);
    return 0;
}

/* ---- operations ---- */

typedef struct all_ctx {
    cy_broker *b;
    json_t *obj;
} all_ctx;

static void add_presence(void *ctx, void *v)
{
    all_ctx *ac = ctx;
    api_presence *pr = v;
    json_object_set_new(ac->obj, pr->id, presence_json(ac->b, pr));
}

static void kick(cy_broker *b, const char *id)
{
    cy_session *s = cy_map_get(&b->sessions, id, strlen(id));
    if (s && s->conn) {
        s->conn->clean_disconnect = true; /* no will from a deleted device */
        cy_conn_close(s->conn, CY_RC_NOT_AUTHORIZED, "device deleted");
    }
    s = cy_map_get(&b->sessions, id, strlen(id));
    if (s) cy_session_end(b, s);
    api_presence *pr = cy_map_del(&b->api->presence, id, strlen(id));
    cy_free(pr);
}

void cy_api_device_op(cy_broker *b, unsigned from, uint32_t req_id, uint8_t op, const char *id,
                      size_t id_len, const char *name, size_t name_len, const uint8_t *arg,
                      size_t arg_len, uint32_t timeout_ms)
{
    char dev[CY_DEVICE_ID_LEN + 1] = "";
    char nm[API_NAME_MAX + 1] = "";
    if (id_len > CY_DEVICE_ID_LEN || name_len > API_NAME_MAX || arg_len > API_ARG_MAX) {
        answer_error(b, from, req_id, 400, "bad_request", "malformed request");
        return;
    }
    memcpy(dev, id, id_len);
    memcpy(nm, name, name_len);
    switch (op) {
    case API_OP_PRESENCE:
        answer(b, from, req_id, 200,
               presence_json(b, presence_get(b->api, dev, id_len, false)));
        return;
    case API_OP_PRESENCE_ALL: {
        all_ctx ac = {b, json_object()};
        cy_map_each(&b->api->presence, add_presence, &ac);
        answer(b, from, req_id, 200, ac.obj);
        return;
    }
    case API_OP_CALL:
    case API_OP_GET:
        if (timeout_ms == 0 || timeout_ms > API_MAX_TIMEOUT_MS) timeout_ms = API_DEFAULT_TIMEOUT_MS;
        start_call(b, from, req_id, op, dev, nm, arg, arg_len, timeout_ms);
        return;
    case API_OP_KICK:
        kick(b, dev);
        answer(b, from, req_id, 200, json_pack("{s:s, s:b}", "id", dev, "deleted", 1));
        return;
    default: answer_error(b, from, req_id, 400, "bad_request", "unknown operation");
    }
}

void cy_api_device_tick(cy_broker *b, int64_t now)
{
    cy_api *a = b->api;
    for (api_call *k = a->calls, *n; k; k = n) {
        n = k->next;
        if (now < k->deadline) continue;
        char msg[160];
        snprintf(msg, sizeof(msg), "device %s did not answer %s %s in time", k->device,
                 k->op == API_OP_CALL ? "the call of" : "the read of", k->name);
        b->stats.api_call_timeouts++;
        answer_error(b, k->from, k->req_id, 504, "device_timeout", msg);
        call_unlink(a, k);
    }
}

static void free_presence(void *ctx, void *v)
{
    (void)ctx;
    cy_free(v);
}

void cy_api_device_free(cy_api *a)
{
    while (a->calls) call_unlink(a, a->calls);
    cy_map_fini(&a->calls_by_rid);
    cy_map_each(&a->presence, free_presence, NULL);
    cy_map_fini(&a->presence);
}
