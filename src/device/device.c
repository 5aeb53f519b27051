/* device: the device layer's lifecycle and the device convention (device.h;
 * docs/device-protocol.md). Presence is presence.c's.
 *
 * A device's own space is "devices/<id>/..." and the shared event space is
 * "events/..."; an isolated device may use nothing else. Three topics of its
 * own space mean something to cyan:
 *   devices/<id>/describe      its functions and variables (JSON), kept as
 *                              a retained message, so every shard can list
 *                              them without asking the owner;
 *   devices/<id>/reply[/<rid>] the answer to a call or read (calls.c);
 *   devices/<id>/events/...    events (routed like any publish; the API's
 *                              event buffer is a subscriber of them).
 * Event names starting with "cyan/" (CY_EVENT_RESERVED) are the server's
 * own, its status events among them (presence.c): no one else publishes
 * one, so a status event is always cyan's word.
 */
#include "device/device_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

/* ACL refusals: one line per client per window, at most a burst a window. */
#define ACL_LOG_WINDOW_MS 10000
#define ACL_LOG_BURST 20

/* ---- lifecycle ---- */

int cy_devices_new(uv_loop_t *loop, const cy_config *cfg, cy_store *store, cy_router *router,
                   cy_cluster *cluster, cy_counters *stats, cy_hists *hists, unsigned self,
                   unsigned nshards, uint64_t generation, cy_devices **out)
{
    cy_devices *d = cy_calloc(1, sizeof(*d));
    if (!d) return CY_ENOMEM;
    d->loop = loop;
    d->cfg = cfg;
    d->store = store;
    d->router = router;
    d->cluster = cluster;
    d->stats = stats;
    d->hists = hists;
    d->self = self;
    d->nshards = nshards ? nshards : 1;
    d->generation = generation;
    cy_session_map_init(&d->sessions);
    cy_map_init(&d->calls_by_rid);
    cy_presence_init(d);
    cy_session_init_kind(d);
    cy_requests_init(d);
    cy_logrl_init(&d->acl_log, ACL_LOG_WINDOW_MS, ACL_LOG_BURST);
    *out = d;
    return 0;
}

void cy_devices_set_answer(cy_devices *d, cy_device_answer_fn fn, void *ctx)
{
    if (!fn) {
        cy_requests_init_answer(d);
        return;
    }
    d->answer = fn;
    d->answer_ctx = ctx;
}

static void free_session(void *ctx, cy_session *s)
{
    cy_session_free(ctx, s); /* takes s out of the map: allowed to the visitor */
}

void cy_devices_free(cy_devices *d)
{
    if (!d) return;
    cy_session_map_each(&d->sessions, free_session, d);
    cy_session_map_fini(&d->sessions);
    cy_calls_free(d);
    cy_requests_free(d);
    cy_presence_free(d);
    cy_acl_free(d->acl);
    cy_free(d);
}

/* ---- loading persistent state ---- */

int cy_devices_load_session(void *ctx, const cy_store_session *sr)
{
    cy_devices *d = ctx;
    cy_session *s = cy_session_new(d, sr->client_id, strlen(sr->client_id));
    if (!s) return CY_ENOMEM;
    s->version = sr->version;
    s->expiry = sr->expiry;
    s->persistent = true;
    int64_t now_wall = cy_wall_ms();
    int64_t away = sr->disconnected_at ? now_wall - sr->disconnected_at : 0;
    if (away < 0) away = 0;
    if (cy_offline_link(d, s, (int64_t)uv_now(d->loop) - away)) {
        cy_session_free(d, s);
        return CY_ENOMEM;
    }
    return 0;
}

int cy_devices_load_sub(void *ctx, const char *client_id, const char *filter, uint8_t opts,
                        uint32_t sub_id)
{
    cy_devices *d = ctx;
    cy_session *s = cy_session_find(d, client_id, strlen(client_id));
    return s ? cy_session_load_sub(d, s, filter, strlen(filter), opts, sub_id) : 0;
}

int cy_devices_load_msg(void *ctx, const char *client_id, const cy_store_msg *sm)
{
    cy_devices *d = ctx;
    cy_session *s = cy_session_find(d, client_id, strlen(client_id));
    return s ? cy_session_load_msg(d, s, sm) : 0;
}

int cy_devices_load_inq2(void *ctx, const char *client_id, uint16_t id)
{
    cy_devices *d = ctx;
    cy_session *s = cy_session_find(d, client_id, strlen(client_id));
    return s ? cy_session_load_inq2(s, id) : 0;
}

/* s is in the offline list: it has a cold block. */
static bool session_expired(const cy_session *s, int64_t now)
{
    return s->expiry != 0xFFFFFFFFu && now - s->cold->offline_since >= (int64_t)s->expiry * 1000;
}

size_t cy_devices_end_expired(cy_devices *d)
{
    int64_t now = (int64_t)uv_now(d->loop);
    size_t ended = 0;
    for (cy_session *s = d->offline, *n; s; s = n) {
        n = s->cold->offline_next;
        if (session_expired(s, now)) {
            cy_session_end(d, s);
            ended++;
        }
    }
    return ended;
}

void cy_devices_sweep(cy_devices *d)
{
    int64_t now = (int64_t)uv_now(d->loop);
    cy_session *s = d->offline;
    while (s) {
        cy_session *next = s->cold->offline_next;
        if (session_expired(s, now))
            cy_session_end(d, s); /* publishes a pending will */
        else if (s->will && s->will_at && now >= s->will_at)
            cy_session_publish_will(d, s, " after its delay");
        s = next;
    }
    cy_presence_flush(d, cy_mono_ms(), false);
}

void cy_devices_tick(cy_devices *d, int64_t now)
{
    cy_calls_tick(d, now);
    cy_requests_tick(d, now);
    cy_presence_tick(d, now);
}

/* ---- owed work ---- */

typedef struct sendable_sum {
    const cy_devices *d;
    uint64_t n;
} sendable_sum;

static void add_sendable(void *ctx, cy_session *s)
{
    sendable_sum *sum = ctx;
    sum->n += cy_session_sendable(sum->d, s);
}

uint64_t cy_devices_online_queued(const cy_devices *d)
{
    return d->online_queued;
}

uint64_t cy_devices_owed_deliveries(const cy_devices *d)
{
    /* Walking 10k sessions costs ~0.7 ms: skipped while no connected
     * device has anything queued, the usual case. */
    if (!d->online_queued) return 0;
    sendable_sum sum = {d, 0};
    cy_session_map_each(&d->sessions, add_sendable, &sum);
    return sum.n;
}

uint64_t cy_devices_owed_calls(const cy_devices *d, int64_t now)
{
    return cy_calls_owed(d, now) + cy_requests_owed(d, now);
}

uint64_t cy_devices_progress(const cy_devices *d)
{
    return d->progress;
}

/* ---- the operator's ACL ---- */

static void recheck_online(void *ctx, cy_session *s)
{
    if (s->link) cy_session_acl_recheck(ctx, s);
}

int cy_devices_load_acl(cy_devices *d, char *err, size_t errlen)
{
    cy_acl *a = NULL;
    if (d->cfg->acl_file[0]) {
        a = cy_acl_load(d->cfg->acl_file, err, errlen);
        if (!a) return CY_ECONFIG;
    }
    cy_devices_set_acl(d, a);
    return 0;
}

void cy_devices_set_acl(cy_devices *d, cy_acl *a)
{
    cy_acl_free(d->acl);
    d->acl = a;
    if (++d->acl_gen == 0) d->acl_gen = 1;
    /* Offline sessions are checked when their device comes back (it names
     * itself then); connected ones now, so that an ACL without deny rules
     * keeps its deliveries free of per-message checks. */
    if (a) cy_session_map_each(&d->sessions, recheck_online, d);
}

const cy_acl *cy_devices_acl(const cy_devices *d)
{
    return d->acl;
}

static const char *access_word(int access)
{
    return access == CY_ACL_WRITE  ? "publish on"
           : access == CY_ACL_READ ? "delivery of"
                                   : "subscription to";
}

bool cy_device_acl(cy_devices *d, const cy_who *w, const char *t, size_t len, int access)
{
    if (!d->acl || !w || w->internal) return true;
    if (cy_acl_check(d->acl, w->client_id, w->client_id_len, w->username, w->username_len, t, len,
                     access))
        return true;
    d->stats->acl_file_denied++;
    char id[CY_MAX_CLIENT_ID + 1];
    size_t n = w->client_id_len < CY_MAX_CLIENT_ID ? w->client_id_len : CY_MAX_CLIENT_ID;
    if (n) memcpy(id, w->client_id, n);
    id[n] = '\0';
    char more[CY_LOGRL_MORE];
    if (cy_logrl_line(&d->acl_log, id, more))
        cy_warn(id, "%s %.*s refused by acl_file (%s%.*s%s)%s", access_word(access),
                (int)(len > 200 ? 200 : len), t, w->username ? "user '" : "anonymous",
                w->username ? (int)(w->username_len > 64 ? 64 : w->username_len) : 0,
                w->username ? w->username : "", w->username ? "'" : "", more);
    return false;
}

/* ---- topic spaces ---- */

static bool has_prefix(const char *t, size_t len, const char *p, size_t plen)
{
    return len > plen && memcmp(t, p, plen) == 0;
}

/* Does t start with "devices/<id>/" and go on after it? */
static bool own_space(const char *id, size_t idl, const char *t, size_t len)
{
    return has_prefix(t, len, "devices/", 8) && len > 8 + idl + 1 && memcmp(t + 8, id, idl) == 0 &&
           t[8 + idl] == '/';
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
    if (len == 0 || len > CY_DEVICE_NAME_MAX) return false;
    /* a path segment a URL cannot name: clients and proxies fold it away */
    if ((len == 1 && n[0] == '.') || (len == 2 && n[0] == '.' && n[1] == '.')) return false;
    for (size_t i = 0; i < len; i++) {
        char ch = n[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-' || ch == '.'))
            return false;
    }
    return true;
}

bool cy_device_op_name_ok(const char *n, size_t len)
{
    return n && valid_name(n, len);
}

static bool valid_names(json_t *arr)
{
    if (!arr) return true;
    if (!json_is_array(arr) || json_array_size(arr) > CY_DEVICE_DESCRIBE_NAMES) return false;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (!json_is_string(v) || !valid_name(json_string_value(v), json_string_length(v)))
            return false;
    }
    return true;
}

/* A firmware-reported string shown by the API: 1 to CY_DEVICE_INFO_MAX
 * printable ASCII characters (no control characters to end up in a
 * terminal's table, nothing unbounded in a device list). */
static bool valid_info(json_t *v)
{
    if (!json_is_string(v)) return false;
    size_t len = json_string_length(v);
    const char *t = json_string_value(v);
    if (len == 0 || len > CY_DEVICE_INFO_MAX) return false;
    for (size_t i = 0; i < len; i++)
        if (t[i] < 0x20 || t[i] > 0x7e) return false;
    return true;
}

static const char *const info_keys[] = {"version", "model"};

bool cy_device_describe_ok(const uint8_t *p, size_t len)
{
    if (len > CY_DEVICE_DESCRIBE_MAX) return false;
    json_t *doc = json_loadb((const char *)p, len, JSON_REJECT_DUPLICATES, NULL);
    bool ok = doc && json_is_object(doc) && valid_names(json_object_get(doc, "functions")) &&
              valid_names(json_object_get(doc, "variables"));
    for (size_t i = 0; ok && i < sizeof(info_keys) / sizeof(info_keys[0]); i++) {
        json_t *v = json_object_get(doc, info_keys[i]);
        ok = !v || valid_info(v);
    }
    json_decref(doc);
    return ok;
}

json_t *cy_device_info(json_t *describe, const char *key)
{
    json_t *v = json_object_get(describe, key);
    return v && valid_info(v) ? json_incref(v) : json_null();
}

json_t *cy_device_describe(cy_devices *d, const char *id)
{
    char topic[8 + CY_MAX_CLIENT_ID + 10];
    int n = snprintf(topic, sizeof(topic), "devices/%s/describe", id);
    if (n < 0 || (size_t)n >= sizeof(topic)) return NULL;
    cy_msg *m = cy_router_retained(d->router, topic, (size_t)n);
    return m ? json_loadb((const char *)m->payload, m->payload_len, 0, NULL) : NULL;
}

json_t *cy_device_names(json_t *describe, const char *key)
{
    json_t *v = json_object_get(describe, key);
    return json_is_array(v) ? json_incref(v) : json_array();
}

/* ---- admission ---- */

int cy_device_admit(cy_devices *d, const char *device_id, size_t id_len, const cy_who *who,
                    const char *topic, size_t len, const uint8_t *payload, size_t plen,
                    bool *retain, bool *reply, const char **why)
{
    *reply = false;
    if (len > d->cfg->max_topic_length) {
        d->stats->limit_topic_too_long++;
        *why = "topic over max_topic_length";
        return CY_REASON_TOPIC_INVALID;
    }
    if (len && topic[0] == '$') {
        *why = "topic in a reserved $ space";
        return CY_REASON_NOT_AUTHORIZED;
    }
    if (cy_topic_reserved_event(topic, len)) {
        *why = "event names beginning with " CY_EVENT_RESERVED " are cyan's own";
        return CY_REASON_NOT_AUTHORIZED;
    }
    if (device_id && !cy_device_topic_ok(device_id, id_len, topic, len)) {
        d->stats->acl_denied++;
        *why = "topic outside the device's spaces";
        return CY_REASON_NOT_AUTHORIZED;
    }
    /* The operator's ACL, on top of isolation (counted and logged there). */
    if (!cy_device_acl(d, who, topic, len, CY_ACL_WRITE)) {
        *why = "denied by acl_file";
        return CY_REASON_NOT_AUTHORIZED;
    }
    if (!device_id) return 0;
    if (is_describe(device_id, id_len, topic, len)) {
        if (plen && !cy_device_describe_ok(payload, plen)) {
            *why = "describe is not {\"functions\": [names], \"variables\": [names]} "
                   "within the limits";
            return CY_REASON_PAYLOAD_INVALID;
        }
        *retain = true;
        return 0;
    }
    *reply = cy_device_is_reply(device_id, id_len, topic, len);
    return 0;
}
