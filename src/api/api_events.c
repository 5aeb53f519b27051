/* api_events: the event buffer and the server-sent event streams.
 *
 * Events are device publishes on "devices/<id>/events/<name>" and publishes
 * on the shared "events/<name>". Every shard holds a subscription to both
 * (a subscriber of kind "events", router.h), so every shard sees every event of the
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
#include "api/api_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "webhooks/webhooks.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void event_deliver(void *ctx, cy_subscriber *s, const cy_route *r, const cy_match *x);

int cy_api_events_init(cy_api *a, uint32_t capacity)
{
    a->ring = cy_calloc(capacity, sizeof(*a->ring));
    if (!a->ring) return CY_ENOMEM;
    a->ring_cap = capacity;
    cy_logrl_init(&a->rl, 10000, 20);
    a->events_kind = (cy_sub_kind){.name = "events",
                                   .deliver = event_deliver,
                                   .ctx = a};
    cy_subscriber_init(&a->events_sub, &a->events_kind);
    return 0;
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
    return cy_webhooks_event_view(m->topic, m->topic_len, &v->name, &v->name_len, &v->device,
                                  &v->device_len);
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
                          data_json(e->m, &b64), "published_at", cy_device_time(e->at), "device_id",
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

/* The event's shared body, made on first need (NULL: it cannot be shown,
 * or out of memory; either way streams skip it). */
static cy_http_chunk *event_chunk(api_event *e)
{
    if (!e->formatted) {
        ev_view v;
        char *body = view(e->m, &v) ? event_body(e, &v) : NULL;
        e->body = body ? cy_http_chunk_new(body, strlen(body)) : NULL;
        free(body);
        e->formatted = true;
    }
    return e->body;
}

static api_event *ring_at(cy_api *a, uint64_t pos)
{
    return &a->ring[(a->ring_head + (uint32_t)(pos - a->ring_first)) % a->ring_cap];
}

/* Write one event to a stream: its own id line (copied), then the body all
 * streams share (a reference). false if the stream must end. */
static bool send_event(cy_api *b, api_stream *s, api_event *e)
{
    s->cursor[e->origin] = e->seq;
    cy_http_chunk *body = event_chunk(e);
    if (!body) return true; /* skipped, and the cursor moves past it */
    cy_buf *out = &b->out;
    cy_buf_reset(out);
    int rc = cy_buf_append(out, "id: ", 4);
    rc = rc ? rc : append_cursor(out, s->cursor, b->nshards);
    rc = rc ? rc : cy_buf_append(out, "\n", 1);
    if (rc) return false;
    /* Both parts or neither: the id alone would be taken for the next event's. */
    size_t need = cy_buf_size(out) + cy_http_chunk_len(body);
    size_t backlog = cy_http_stream_backlog(s->req);
    if (backlog > API_STREAM_BACKLOG || need > API_STREAM_BACKLOG - backlog) return false;
    if (cy_http_stream_write(s->req, (const char *)cy_buf_head(out), cy_buf_size(out))) return false;
    return cy_http_stream_write_ref(s->req, body) == 0;
}

/* A line about a stream the server ended or refused, at most one per client
 * address per window: a stranger can repeat these at will. */
static void stream_note(cy_api *a, const char *addr, const char *peer, const char *what)
{
    char more[CY_LOGRL_MORE];
    if (cy_logrl_line(&a->rl, addr, more)) cy_info(peer, "%s%s", what, more);
}

static void stream_unlink(cy_api *a, api_stream *s)
{
    if (a->fan_next == s) a->fan_next = s->next;
    if (a->replay_next == s) a->replay_next = s->next;
    if (s->prev)
        s->prev->next = s->next;
    else
        a->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    a->nstreams--;
    cy_free(s->prefix);
    cy_free(s);
}

static void stream_end(cy_api *a, api_stream *s)
{
    cy_http_stream_end(s->req);
    stream_unlink(a, s);
}

/* Offer the event at a->fan_pos to the streams from a->fan_next on, and
 * the next events after it up to end_pos, until none is left (true) or the
 * slice's time is up (until_us; 0 = no limit) (false). A stream opened meanwhile is added at the head, behind
 * the walk: it needs none of these events (its cursor starts past them, or
 * its replay sends them). */
static bool fan_out(cy_api *b, int64_t until_us, uint64_t end_pos)
{
    cy_api *a = b;
    unsigned n = 0, sent = 0;
    while (a->fan_pos < end_pos) {
        api_event *e = ring_at(a, a->fan_pos);
        ev_view v;
        if (!a->fan_started) {
            a->fan_next = a->streams;
            a->fan_started = true;
        }
        bool shown = view(e->m, &v);
        while (shown && a->fan_next) {
            api_stream *s = a->fan_next;
            a->fan_next = s->next;
            if (s->catching_up || e->seq <= s->cursor[e->origin] || !matches(s, &v)) continue;
            if (!send_event(b, s, e)) {
                stream_note(a, s->addr, cy_http_peer(s->req),
                            "event stream ended: the client reads too slowly");
                stream_end(a, s);
            }
            if (until_us && ++sent >= API_STREAM_SLICE_WRITES) return false;
            if (until_us && (++n & 31) == 0 && cy_mono_us() > until_us) return false;
        }
        a->fan_started = false;
        a->fan_next = NULL;
        a->fan_pos++;
    }
    return true;
}

static void fan_idle_cb(uv_idle_t *h);

/* Run a slice of the fan-out now; if work is left, the next pass of the
 * loop runs the next slice (an idle handle: the loop polls without
 * blocking while it is on, so I/O is served between slices). */
static void fan_slice(cy_api *b)
{
    cy_api *a = b;
    bool done = fan_out(b, cy_mono_us() + API_STREAM_SLICE_US, a->ring_first + a->ring_count);
    if (done && a->fan_idle_on) {
        uv_idle_stop(&a->fan_idle);
        a->fan_idle_on = false;
    } else if (!done && !a->fan_idle_on) {
        if (!a->fan_idle_init) {
            uv_idle_init(b->loop, &a->fan_idle);
            a->fan_idle.data = b;
            a->fan_idle_init = true;
        }
        uv_idle_start(&a->fan_idle, fan_idle_cb);
        a->fan_idle_on = true;
    }
}

static void fan_idle_cb(uv_idle_t *h)
{
    fan_slice(h->data);
}

/* The events kind's deliver: m matched the event filters: buffer it and
 * send it to the streams. */
static void event_deliver(void *ctx, cy_subscriber *s, const cy_route *r, const cy_match *x)
{
    cy_api *a = ctx;
    cy_api *b = a;
    cy_msg *m = r->m;
    (void)s;
    (void)x;
    if (!m->event_seq || m->origin >= CY_SB_MAX_SHARDS) return;
    ev_view v;
    if (!view(m, &v)) return;
    unsigned o = m->origin;
    /* Already here: loaded from the logs at start, or a frame a peer sent
     * again after a restart. */
    if (m->event_seq <= a->last_seq[o]) return;
    a->last_seq[o] = m->event_seq;
    b->stats->events++;
    uint32_t at;
    if (a->ring_count == a->ring_cap) {
        /* The oldest event leaves the ring: if the fan-out has not offered
         * it to every stream yet (a burst larger than the ring), finish
         * that now, whatever it costs, rather than lose it. */
        if (a->fan_pos == a->ring_first) fan_out(b, 0, a->ring_first + 1);
        api_event *old = &a->ring[a->ring_head];
        if (old->seq > a->evicted[old->origin]) a->evicted[old->origin] = old->seq;
        cy_msg_unref(old->m);
        cy_http_chunk_unref(old->body);
        at = a->ring_head;
        a->ring_head = (a->ring_head + 1) % a->ring_cap;
        a->ring_first++;
    } else {
        at = (a->ring_head + a->ring_count++) % a->ring_cap;
    }
    api_event *e = &a->ring[at];
    *e = (api_event){.m = cy_msg_ref(m), .seq = m->event_seq, .origin = (uint8_t)o,
                     .at = cy_wall_ms()};
    fan_slice(b);
}

/* ---- the ring's first events, from the logs ---- */

typedef struct tail_ev {
    cy_msg *m;
    int64_t at;
} tail_ev;

typedef struct tail_ctx {
    tail_ev *v;
    size_t n, cap;
    unsigned origin;
} tail_ctx;

static int tail_row(void *ctx, const cy_store_event *e)
{
    tail_ctx *c = ctx;
    if (c->n == c->cap) return 1;
    cy_msg *m = cy_msg_new(e->topic, e->topic_len, e->payload, e->payload_len, NULL, 0, 0, false, 0);
    if (!m) return CY_ENOMEM;
    m->origin = (uint8_t)c->origin;
    m->event_seq = e->seq;
    c->v[c->n++] = (tail_ev){m, e->at};
    return 0;
}

static int tail_cmp(const void *x, const void *y)
{
    const tail_ev *a = x, *b = y;
    if (a->at != b->at) return a->at < b->at ? -1 : 1;
    if (a->m->origin != b->m->origin) return a->m->origin < b->m->origin ? -1 : 1;
    return a->m->event_seq < b->m->event_seq ? -1 : a->m->event_seq > b->m->event_seq;
}

int cy_api_events_preload(cy_api *a)
{
    size_t cap = (size_t)a->ring_cap * a->nshards;
    tail_ctx c = {cy_calloc(cap ? cap : 1, sizeof(tail_ev)), 0, 0, 0};
    if (!c.v) return CY_ENOMEM;
    for (unsigned j = 0; j < a->nshards; j++) {
        char path[1200];
        cy_webhooks_shard_path(a->cfg, j, path, sizeof(path));
        cy_store *r;
        if (cy_store_open_reader(path, &r)) continue; /* no file yet: nothing logged */
        c.origin = j;
        size_t before = c.n;
        c.cap = before + a->ring_cap;
        cy_store_events_tail(r, a->ring_cap, tail_row, &c);
        cy_store_close(r);
        (void)before;
    }
    /* Oldest first, by the time each was logged; the newest ring_cap stay. */
    qsort(c.v, c.n, sizeof(*c.v), tail_cmp);
    size_t from = c.n > a->ring_cap ? c.n - a->ring_cap : 0;
    for (size_t i = 0; i < c.n; i++) {
        cy_msg *m = c.v[i].m;
        unsigned o = m->origin;
        if (i < from) {
            /* Not kept: what a resuming client misses from here is a gap. */
            if (m->event_seq > a->evicted[o]) a->evicted[o] = m->event_seq;
        } else if (m->event_seq > a->last_seq[o] && a->ring_count < a->ring_cap) {
            a->last_seq[o] = m->event_seq;
            uint32_t at = (a->ring_head + a->ring_count++) % a->ring_cap;
            a->ring[at] = (api_event){.m = cy_msg_ref(m), .seq = m->event_seq,
                                      .origin = (uint8_t)o, .at = c.v[i].at};
        }
        if (m->event_seq > a->last_seq[o]) a->last_seq[o] = m->event_seq;
        cy_msg_unref(m);
    }
    a->fan_pos = a->ring_first + a->ring_count; /* nothing to fan out: no stream yet */
    cy_free(c.v);
    return 0;
}

/* The client left: forget the stream (the request is freed by http). */
static void stream_gone(void *arg, cy_http_req *req)
{
    api_stream *s = arg;
    (void)req;
    stream_unlink(s->a, s);
}

/* Replay what s missed from the ring, in ring order, while its unsent
 * output stays under half the limit and the slice lasts (until_us, 0 = no
 * limit); the tick calls again until it has caught up, then live events
 * flow. Meanwhile live events wait in the ring (sending one would move the
 * cursor past older ones not yet replayed). false: the stream must end. */
static bool catch_up(cy_api *b, api_stream *s, int64_t until_us)
{
    cy_api *a = b;
    if (s->replay_pos < a->ring_first) s->replay_pos = a->ring_first;
    unsigned n = 0;
    for (; s->replay_pos < a->ring_first + a->ring_count; s->replay_pos++) {
        if (cy_http_stream_backlog(s->req) > API_STREAM_BACKLOG / 2) return true;
        if (until_us && (++n & 63) == 0 && cy_mono_us() > until_us) return true;
        api_event *e = ring_at(a, s->replay_pos);
        ev_view v;
        if (e->seq <= s->cursor[e->origin] || !view(e->m, &v) || !matches(s, &v)) continue;
        if (!send_event(b, s, e)) return false;
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

/* An error body when there is no memory for the one meant (a request
 * must be answered all the same). */
static const char NO_MEMORY_BODY[] = "{\"error\":\"internal\",\"message\":\"out of memory\"}";

/* The stream could not start: answer 500 instead (the request is ours). */
static void open_failed(cy_api *b, cy_http_req *req, const char *why)
{
    char *body = cy_api_error_body("internal", "%s", why);
    const char *text = body ? body : NO_MEMORY_BODY;
    cy_api_answered(b, req);
    cy_http_reply(req, 500, NULL, text, strlen(text), NULL);
    free(body);
}

/* The address part of "ip:port" / "[ip6]:port". */
static void peer_addr(const char *peer, char *out, size_t size)
{
    snprintf(out, size, "%s", peer ? peer : "?");
    char *colon = strrchr(out, ':');
    if (colon && colon != out) *colon = '\0';
}

void cy_api_stream_open(cy_api *b, cy_http_req *req, const char *device, const char *prefix,
                        const api_auth *auth)
{
    cy_api *a = b;
    char addr[64];
    peer_addr(cy_http_peer(req), addr, sizeof(addr));
    const char *token_id = auth ? auth->id : "";
    /* One token or one address may not take every connection of the shard
     * (each stream holds one for as long as it lasts). */
    unsigned by_token = 0, by_addr = 0;
    for (api_stream *s = a->streams; s; s = s->next) {
        by_token += strcmp(s->token, token_id) == 0;
        by_addr += strcmp(s->addr, addr) == 0;
    }
    if (by_token >= b->cfg->sse_max_per_token || by_addr >= b->cfg->sse_max_per_address) {
        bool tok = by_token >= b->cfg->sse_max_per_token;
        stream_note(a, addr, cy_http_peer(req),
                    tok ? "event stream refused: too many streams on its token"
                        : "event stream refused: too many streams from its address");
        char *body = cy_api_error_body(
            "too_many_streams", "%s already holds %u event streams on this shard (the limit)",
            tok ? "this token" : "this address",
            tok ? b->cfg->sse_max_per_token : b->cfg->sse_max_per_address);
        static const char *const retry[] = {"Retry-After", "5", NULL};
        const char *text = body ? body : NO_MEMORY_BODY;
        cy_api_answered(b, req);
        cy_http_reply(req, 429, NULL, text, strlen(text), retry);
        free(body);
        return;
    }
    api_stream *s = cy_calloc(1, sizeof(*s));
    if (s) s->prefix = cy_strdup(prefix ? prefix : "");
    if (!s || !s->prefix) {
        cy_free(s);
        open_failed(b, req, "out of memory");
        return;
    }
    s->a = a;
    s->prefix_len = strlen(s->prefix);
    if (device) snprintf(s->device, sizeof(s->device), "%s", device);
    snprintf(s->token, sizeof(s->token), "%s", token_id);
    s->expires_at = auth ? auth->expires_at : 0;
    memcpy(s->addr, addr, sizeof(s->addr));
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
        open_failed(b, req, "cannot start the stream");
        return;
    }
    cy_http_on_close(req, stream_gone, s);
    s->next = a->streams;
    if (a->streams) a->streams->prev = s;
    a->streams = s;
    a->nstreams++;

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
    /* The replay starts in the next tick, in slices shared with the other
     * streams replaying: a thousand clients resuming at once are served
     * without one long pass. */
    s->catching_up = true;
    s->replay_pos = a->ring_first;
}

/* End the streams whose token was revoked (one registry lookup per
 * distinct token, not per stream) or has expired (the expiry each stream
 * keeps: a token's never changes). A registry that cannot be read ends
 * nothing (the next check tries again). A stream opened with a stream
 * token belongs to its parent: it lives as long as the parent does. */
static void recheck_tokens(cy_api *b)
{
    cy_api *a = b;
    int64_t wall = cy_wall_ms();
    cy_map seen; /* token id -> (void *)1 valid, (void *)2 revoked; keys borrowed from streams */
    cy_map_init(&seen);
    for (api_stream *s = a->streams; s; s = s->next) {
        if (!s->token[0]) continue;
        void *v = cy_map_get(&seen, s->token, strlen(s->token));
        if (!v) {
            int rc = cy_registry_token_exists(b->registry, s->token);
            v = rc == 0 ? (void *)2 : (void *)1;
            if (cy_map_put(&seen, s->token, strlen(s->token), v)) {
                /* out of memory: judged alone, the next stream asks again */
            }
        }
        s->revoked = v == (void *)2;
    }
    cy_map_fini(&seen);
    for (api_stream *s = a->streams, *n; s; s = n) {
        n = s->next;
        bool expired = s->expires_at > 0 && wall >= s->expires_at;
        if (!s->revoked && !expired) continue;
        if (s->revoked) {
            cy_http_stream_write(s->req, ": token revoked\n\n", 17);
            stream_note(a, s->addr, cy_http_peer(s->req),
                        "event stream ended: its token was revoked");
        } else {
            cy_http_stream_write(s->req, ": token expired\n\n", 17);
            stream_note(a, s->addr, cy_http_peer(s->req), "event stream ended: its token expired");
        }
        stream_end(a, s);
    }
}

void cy_api_events_tick(cy_api *b, int64_t now)
{
    cy_api *a = b;
    /* Replays, one slice per tick, going on from where the last one
     * stopped so that every stream gets its turn. */
    int64_t until = cy_mono_us() + API_STREAM_SLICE_US;
    api_stream *s = a->replay_next ? a->replay_next : a->streams;
    for (unsigned visited = 0; s && visited < a->nstreams; visited++) {
        api_stream *n = s->next ? s->next : a->streams;
        if (s->catching_up && !catch_up(b, s, until)) {
            if (n == s) n = NULL;
            stream_end(a, s);
        }
        s = n;
        if (cy_mono_us() > until) break;
    }
    a->replay_next = s;
    if (now >= a->next_token_check) {
        a->next_token_check = now + API_TOKEN_RECHECK_MS;
        recheck_tokens(b);
    }
    if (now < a->next_heartbeat) return;
    a->next_heartbeat = now + (int64_t)b->cfg->sse_heartbeat * 1000;
    for (api_stream *t = a->streams, *n; t; t = n) {
        n = t->next;
        if (cy_http_stream_write(t->req, ": heartbeat\n\n", 13)) stream_end(a, t);
    }
}

static void fan_idle_closed(uv_handle_t *h)
{
    (void)h;
}

void cy_api_streams_close(cy_api *a)
{
    while (a->streams) stream_end(a, a->streams);
    a->fan_pos = a->ring_first + a->ring_count;
    if (a->fan_idle_init) {
        uv_close((uv_handle_t *)&a->fan_idle, fan_idle_closed);
        a->fan_idle_init = a->fan_idle_on = false;
    }
}

void cy_api_events_free(cy_api *a)
{
    for (uint32_t i = 0; i < a->ring_count; i++) {
        api_event *e = &a->ring[(a->ring_head + i) % a->ring_cap];
        cy_msg_unref(e->m);
        cy_http_chunk_unref(e->body);
    }
    a->ring_count = 0;
    cy_free(a->ring);
    a->ring = NULL;
}
