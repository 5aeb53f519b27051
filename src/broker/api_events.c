/* api_events: the event buffer and the server-sent event streams.
 *
 * Events are device publishes on "devices/<id>/events/<name>" and publishes
 * on the shared "events/<name>". Every shard holds a subscription to both
 * (owner: the cy_api, see route.c), so every shard sees every event of the
 * node, and keeps the last event_buffer of them in a ring.
 *
 * Resuming on any shard. The shard where an event enters the node (its
 * origin) numbers it: a sequence per origin shard, starting from the wall
 * clock in microseconds when the shard starts, so it keeps growing across
 * restarts. The number travels with the message to the other shards. An
 * event's SSE id is the stream's cursor after it: the last number seen from
 * each origin, "s0.s1.....sN-1". So an id means the same on every shard,
 * though shards see events from different origins interleaved differently:
 * a client that resumes anywhere gets each buffered event whose number is
 * above its cursor for that origin, in the order that shard saw them. If the
 * ring dropped events above a cursor, the stream says so in a ": gap"
 * comment first.
 */
#include "broker/api_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cy_api_events_init(cy_api *a, uint32_t capacity)
{
    a->ring = cy_calloc(capacity, sizeof(*a->ring));
    if (!a->ring) return CY_ENOMEM;
    a->ring_cap = capacity;
    a->seq = (uint64_t)cy_wall_ms() * 1000;
    return 0;
}

void cy_api_event_stamp(cy_broker *b, cy_msg *m)
{
    if (b->api) m->event_seq = ++b->api->seq;
}

/* The event's name, device and space from its topic. */
typedef struct ev_view {
    const char *name;
    size_t name_len;
    const char *device; /* NULL for the shared space */
    size_t device_len;
} ev_view;

static bool view(const cy_msg *m, ev_view *v)
{
    const char *t = m->topic;
    size_t len = m->topic_len;
    if (len > 7 && memcmp(t, "events/", 7) == 0) {
        *v = (ev_view){t + 7, len - 7, NULL, 0};
        return true;
    }
    if (len <= 8 || memcmp(t, "devices/", 8) != 0) return false;
    const char *id = t + 8;
    const char *slash = memchr(id, '/', len - 8);
    if (!slash) return false;
    size_t idl = (size_t)(slash - id);
    size_t rest = len - 8 - idl - 1;
    if (rest <= 7 || memcmp(slash + 1, "events/", 7) != 0) return false;
    *v = (ev_view){slash + 8, rest - 7, id, idl};
    return true;
}

static bool matches(const api_stream *s, const ev_view *v)
{
    if (s->device[0] &&
        (!v->device || v->device_len != strlen(s->device) ||
         memcmp(v->device, s->device, v->device_len) != 0))
        return false;
    return v->name_len >= s->prefix_len && memcmp(v->name, s->prefix, s->prefix_len) == 0;
}

static json_t *data_json(const cy_msg *m, bool *base64)
{
    *base64 = false;
    json_t *d = json_stringn((const char *)m->payload, m->payload_len);
    if (d) return d;
    /* Not UTF-8: carried as base64, and said so. */
    size_t n = 4 * ((m->payload_len + 2) / 3) + 1;
    unsigned char *out = cy_malloc(n);
    if (!out) return json_null();
    EVP_EncodeBlock(out, m->payload, (int)m->payload_len);
    d = json_string((const char *)out);
    cy_free(out);
    *base64 = true;
    return d ? d : json_null();
}

static int append_cursor(cy_buf *o, const uint64_t *cursor, unsigned n)
{
    char num[24];
    int rc = 0;
    for (unsigned j = 0; j < n && !rc; j++) {
        int k = snprintf(num, sizeof(num), j ? ".%" PRIu64 : "%" PRIu64, cursor[j]);
        rc = cy_buf_append(o, num, (size_t)k);
    }
    return rc;
}

/* "event: <name>\ndata: <JSON>\n\n", the part of an event that is the same
 * on every stream (caller frees with free()), or NULL if it cannot be shown
 * (a name that is not UTF-8, or out of memory). */
static char *event_body(const api_event *e, const ev_view *v)
{
    bool b64;
    json_t *o = json_pack("{s:s%, s:o, s:o, s:o, s:b}", "name", v->name, v->name_len, "data",
                          data_json(e->m, &b64), "published_at", cy_api_time(e->at), "device_id",
                          v->device ? json_stringn(v->device, v->device_len) : json_null(),
                          "shared", v->device == NULL);
    if (!o) return NULL;
    if (b64) json_object_set_new(o, "encoding", json_string("base64"));
    char *data = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!data) return NULL;
    size_t dl = strlen(data);
    char *body = malloc(7 + v->name_len + 7 + dl + 3);
    if (body) {
        char *p = body;
        memcpy(p, "event: ", 7);
        p += 7;
        for (size_t i = 0; i < v->name_len; i++) /* no line breaks inside a field */
            *p++ = v->name[i] == '\n' || v->name[i] == '\r' ? '?' : v->name[i];
        memcpy(p, "\ndata: ", 7);
        p += 7;
        memcpy(p, data, dl);
        p += dl;
        memcpy(p, "\n\n", 3); /* with the NUL */
    }
    free(data);
    return body;
}

/* Write one event (its body from event_body) to a stream, with the
 * stream's own id; false if the stream must end. */
static bool send_event(cy_broker *b, api_stream *s, const api_event *e, const char *body)
{
    s->cursor[e->origin] = e->seq;
    if (!body) return true; /* skipped, and the cursor moves past it */
    cy_buf *out = &b->api->out;
    cy_buf_reset(out);
    int rc = cy_buf_append(out, "id: ", 4);
    rc = rc ? rc : append_cursor(out, s->cursor, b->nshards);
    rc = rc ? rc : cy_buf_append(out, "\n", 1);
    rc = rc ? rc : cy_buf_append(out, body, strlen(body));
    if (rc) return false;
    return cy_http_stream_write(s->req, (const char *)cy_buf_head(out), cy_buf_size(out)) == 0;
}

static void stream_unlink(cy_api *a, api_stream *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        a->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    cy_free(s->prefix);
    cy_free(s);
}

static void stream_end(cy_api *a, api_stream *s)
{
    cy_http_stream_end(s->req);
    stream_unlink(a, s);
}

void cy_api_event(cy_broker *b, cy_msg *m)
{
    cy_api *a = b->api;
    if (!a || !m->event_seq || m->origin >= CY_SB_MAX_SHARDS) return;
    ev_view v;
    if (!view(m, &v)) return;
    unsigned o = m->origin;
    if (m->event_seq > a->last_seq[o]) a->last_seq[o] = m->event_seq;
    b->stats.events++;
    uint32_t at;
    if (a->ring_count == a->ring_cap) {
        api_event *old = &a->ring[a->ring_head];
        if (old->seq > a->evicted[old->origin]) a->evicted[old->origin] = old->seq;
        cy_msg_unref(old->m);
        at = a->ring_head;
        a->ring_head = (a->ring_head + 1) % a->ring_cap;
    } else {
        at = (a->ring_head + a->ring_count++) % a->ring_cap;
    }
    api_event *e = &a->ring[at];
    e->m = cy_msg_ref(m);
    e->seq = m->event_seq;
    e->origin = (uint8_t)o;
    e->at = cy_wall_ms();
    char *body = NULL; /* formatted once, for the first stream that takes it */
    bool formatted = false;
    for (api_stream *s = a->streams, *n; s; s = n) {
        n = s->next;
        if (s->catching_up || e->seq <= s->cursor[o] || !matches(s, &v)) continue;
        if (!formatted) {
            body = event_body(e, &v);
            formatted = true;
        }
        if (!send_event(b, s, e, body)) {
            cy_info(cy_http_peer(s->req), "event stream ended: the client reads too slowly");
            stream_end(a, s);
        }
    }
    free(body);
}

/* The client left: forget the stream (the request is freed by http). */
static void stream_gone(void *arg, cy_http_req *req)
{
    api_stream *s = arg;
    (void)req;
    stream_unlink(s->a, s);
}

/* Replay what s missed from the ring, in ring order, while its unsent
 * output stays under half the limit; the tick calls again until it has
 * caught up, then live events flow. Meanwhile live events wait in the ring
 * (sending one would move the cursor past older ones not yet replayed).
 * false: the stream must end. */
static bool catch_up(cy_broker *b, api_stream *s)
{
    cy_api *a = b->api;
    for (uint32_t i = 0; i < a->ring_count; i++) {
        if (cy_http_stream_backlog(s->req) > API_STREAM_BACKLOG / 2) return true;
        api_event *e = &a->ring[(a->ring_head + i) % a->ring_cap];
        ev_view v;
        if (e->seq <= s->cursor[e->origin] || !view(e->m, &v) || !matches(s, &v)) continue;
        char *body = event_body(e, &v);
        bool ok = send_event(b, s, e, body);
        free(body);
        if (!ok) return false;
    }
    s->catching_up = false;
    return true;
}

/* Parse "s0.s1...." with exactly n numbers. */
static bool parse_cursor(const char *text, unsigned n, uint64_t *out)
{
    const char *p = text;
    for (unsigned j = 0; j < n; j++) {
        if (*p < '0' || *p > '9') return false;
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        out[j] = v;
        p = end;
        if (j + 1 < n) {
            if (*p != '.') return false;
            p++;
        }
    }
    return *p == '\0';
}

/* The stream could not start: answer 500 instead (the request is ours). */
static void open_failed(cy_http_req *req, const char *why)
{
    char *body = cy_api_error_body("internal", "%s", why);
    if (body) cy_http_reply(req, 500, NULL, body, strlen(body), NULL);
    free(body);
}

void cy_api_stream_open(cy_broker *b, cy_http_req *req, const char *device, const char *prefix)
{
    cy_api *a = b->api;
    api_stream *s = cy_calloc(1, sizeof(*s));
    if (s) s->prefix = cy_strdup(prefix ? prefix : "");
    if (!s || !s->prefix) {
        cy_free(s);
        open_failed(req, "out of memory");
        return;
    }
    s->a = a;
    s->prefix_len = strlen(s->prefix);
    if (device) snprintf(s->device, sizeof(s->device), "%s", device);
    s->req = req;
    const char *last = cy_http_header(req, "Last-Event-ID");
    if (!last) last = cy_http_query(req, "last_event_id");
    bool resume = last && parse_cursor(last, b->nshards, s->cursor);
    if (!resume) memcpy(s->cursor, a->last_seq, sizeof(s->cursor));
    static const char *const headers[] = {"Cache-Control", "no-cache", "X-Accel-Buffering", "no",
                                          NULL};
    if (cy_http_stream_begin(req, "text/event-stream", headers)) {
        cy_free(s->prefix);
        cy_free(s);
        open_failed(req, "cannot start the stream");
        return;
    }
    cy_http_on_close(req, stream_gone, s);
    s->next = a->streams;
    if (a->streams) a->streams->prev = s;
    a->streams = s;

    char line[256];
    int k = snprintf(line, sizeof(line), ": cyan event stream, shard %u%s\n\n", b->self,
                     last && !resume ? " (Last-Event-ID not understood: live events only)" : "");
    cy_http_stream_write(req, line, (size_t)k);
    if (!resume) return;
    /* Say which origins lost events this client has not seen. */
    char gap[200] = "";
    size_t gl = 0;
    for (unsigned j = 0; j < b->nshards; j++)
        if (a->evicted[j] > s->cursor[j] && gl < sizeof(gap) - 16)
            gl += (size_t)snprintf(gap + gl, sizeof(gap) - gl, " %u", j);
    if (gl) {
        k = snprintf(line, sizeof(line),
                     ": gap: events from shard(s)%s are no longer buffered\n\n", gap);
        cy_http_stream_write(req, line, (size_t)k);
    }
    s->catching_up = true;
    if (!catch_up(b, s)) stream_end(a, s);
}

void cy_api_events_tick(cy_broker *b, int64_t now)
{
    cy_api *a = b->api;
    for (api_stream *s = a->streams, *n; s; s = n) {
        n = s->next;
        if (s->catching_up && !catch_up(b, s)) stream_end(a, s);
    }
    if (now < a->next_heartbeat) return;
    a->next_heartbeat = now + (int64_t)b->cfg->sse_heartbeat * 1000;
    for (api_stream *s = a->streams, *n; s; s = n) {
        n = s->next;
        if (cy_http_stream_write(s->req, ": heartbeat\n\n", 13)) stream_end(a, s);
    }
}

void cy_api_streams_close(cy_api *a)
{
    while (a->streams) stream_end(a, a->streams);
}

void cy_api_events_free(cy_api *a)
{
    for (uint32_t i = 0; i < a->ring_count; i++)
        cy_msg_unref(a->ring[(a->ring_head + i) % a->ring_cap].m);
    a->ring_count = 0;
    cy_free(a->ring);
    a->ring = NULL;
}
