/* api_routes: the route table and its matcher; see api_routes.h.
 *
 * The table is in the order of docs/api.md. The matcher walks it for each
 * request (a few dozen string compares: nothing next to a token's HMAC).
 */
#include "api/api_routes.h"

#include "api/api_int.h"
#include "core/cy_str.h"
#include "store/store.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define DR CY_SCOPE_DEVICES_READ
#define DC CY_SCOPE_DEVICES_CALL
#define ER CY_SCOPE_EVENTS_READ
#define EP CY_SCOPE_EVENTS_PUBLISH
#define WM CY_SCOPE_WEBHOOKS_MANAGE
#define AD CY_SCOPE_ADMIN

static const api_route routes[] = {
    {"GET", "health", 0, API_OP_HEALTH, false},
    {"GET", "devices", DR, API_OP_DEVICES_LIST, false},
    {"POST", "devices", AD, API_OP_DEVICE_CREATE, false},
    {"GET", "devices/*", DR, API_OP_DEVICE_GET, false},
    {"PATCH", "devices/*", AD, API_OP_DEVICE_RENAME, false},
    {"DELETE", "devices/*", AD, API_OP_DEVICE_DELETE, false},
    {"POST", "devices/*/psk", AD, API_OP_DEVICE_PSK, false},
    {"POST", "devices/*/functions/*", DC, API_OP_DEVICE_CALL, false},
    {"GET", "devices/*/variables/*", DC, API_OP_DEVICE_VARIABLE, false},
    {"GET", "devices/*/events", ER, API_OP_DEVICE_EVENTS, true},
    {"GET", "devices/*/events/**", ER, API_OP_DEVICE_EVENTS, true},
    /* Particle's paths (api_particle.c): a function or a variable right
     * after the device, never one of the sub-paths above
     * (cy_api_device_subpath). The same scope as cyan's own. */
    {"POST", "devices/*/*", DC, API_OP_PARTICLE_CALL, false},
    {"GET", "devices/*/*", DC, API_OP_PARTICLE_VARIABLE, false},
    {"GET", "events", ER, API_OP_EVENTS_STREAM, true},
    {"POST", "events", EP, API_OP_EVENT_PUBLISH, false},
    {"POST", "events/stream-token", ER, API_OP_STREAM_TOKEN, false},
    {"GET", "events/*/trace", ER, API_OP_EVENT_TRACE, false},
    {"GET", "events/**", ER, API_OP_EVENTS_STREAM, true},
    {"GET", "webhooks", WM, API_OP_WEBHOOKS_LIST, false},
    {"POST", "webhooks", WM, API_OP_WEBHOOK_CREATE, false},
    {"GET", "webhooks/*", WM, API_OP_WEBHOOK_GET, false},
    {"PATCH", "webhooks/*", WM, API_OP_WEBHOOK_PATCH, false},
    {"DELETE", "webhooks/*", WM, API_OP_WEBHOOK_DELETE, false},
    {"POST", "webhooks/*/secret", WM, API_OP_WEBHOOK_SECRET, false},
    {"GET", "webhooks/*/dead-letters", WM, API_OP_DEAD_LETTERS, false},
    {"POST", "webhooks/*/dead-letters/replay", WM, API_OP_DEAD_REPLAY_ALL, false},
    {"POST", "webhooks/*/dead-letters/*/replay", WM, API_OP_DEAD_REPLAY_ONE, false},
    {"GET", "tokens", AD, API_OP_TOKENS_LIST, false},
    {"POST", "tokens", AD, API_OP_TOKEN_CREATE, false},
    {"DELETE", "tokens/*", AD, API_OP_TOKEN_REVOKE, false},
};

#define NROUTES (sizeof(routes) / sizeof(routes[0]))

const api_route *cy_api_routes(size_t *n)
{
    *n = NROUTES;
    return routes;
}

unsigned cy_api_split(char *path, char *seg[API_MAX_SEGMENTS])
{
    if (strncmp(path, "/v1/", 4) != 0) return 0;
    char *p = path + 4;
    unsigned n = 0;
    while (*p && n < API_MAX_SEGMENTS) {
        seg[n++] = p;
        char *slash = strchr(p, '/');
        if (!slash) break;
        *slash = '\0';
        p = slash + 1;
    }
    return n;
}

/* Whether the pattern matches seg[0..nseg). */
static bool pattern_matches(const char *pattern, char *const *seg, unsigned nseg)
{
    const char *p = pattern;
    unsigned i = 0;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 2 && p[0] == '*' && p[1] == '*') return i < nseg; /* one or more */
        if (i >= nseg) return false;
        if (!(len == 1 && p[0] == '*') && (strlen(seg[i]) != len || memcmp(seg[i], p, len) != 0))
            return false;
        /* "*" takes any segment, even an empty one ("/v1/devices/" names
         * no device: the handler says 404). */
        i++;
        if (!slash) return i == nseg;
        p = slash + 1;
    }
}

static bool route_matches(const api_route *r, char *const *seg, unsigned nseg)
{
    if (!pattern_matches(r->pattern, seg, nseg)) return false;
    /* events/{id}/trace is a trace only for an event id: events/a/trace
     * is the event stream of names starting with "a/trace". */
    if (r->op == API_OP_EVENT_TRACE) return cy_api_is_trace(seg, nseg);
    /* devices/{id}/{name} is Particle's for a name, not for a sub-path of
     * cyan's own (that one's route, 404 or 405 answers), nor for an empty
     * one. */
    if (r->op == API_OP_PARTICLE_CALL || r->op == API_OP_PARTICLE_VARIABLE)
        return seg[2][0] != '\0' && !cy_api_device_subpath(seg[2]);
    return true;
}

bool cy_api_device_subpath(const char *name)
{
    static const char prefix[] = "devices/*/";
    size_t len = strlen(name);
    for (size_t i = 0; i < NROUTES; i++) {
        const char *p = routes[i].pattern;
        if (strncmp(p, prefix, sizeof(prefix) - 1) != 0) continue;
        p += sizeof(prefix) - 1;
        if (*p != '*' && strncmp(p, name, len) == 0 && (p[len] == '\0' || p[len] == '/'))
            return true;
    }
    return false;
}

const api_route *cy_api_route_find(const char *method, char *const *seg, unsigned nseg, char *allow,
                                   size_t allow_cap)
{
    if (allow && allow_cap) allow[0] = '\0';
    size_t used = 0;
    for (size_t i = 0; i < NROUTES; i++) {
        const api_route *r = &routes[i];
        if (!route_matches(r, seg, nseg)) continue;
        if (!strcmp(r->method, method)) return r;
        if (!allow || !allow_cap) continue;
        /* Each method once: two GET routes may match one path (a trace is also
         * a prefix of the event stream). */
        size_t mlen = strlen(r->method);
        bool seen = false;
        for (const char *q = allow; (q = strstr(q, r->method)) != NULL; q += mlen)
            if ((q == allow || q[-1] == ' ') && (q[mlen] == ',' || q[mlen] == '\0')) seen = true;
        if (seen) continue;
        int k = snprintf(allow + used, allow_cap - used, "%s%s", used ? ", " : "", r->method);
        if (k > 0 && (size_t)k < allow_cap - used) used += (size_t)k;
    }
    return NULL;
}

const char *cy_api_cors_allow(const char *list, const char *origin)
{
    if (!list || !origin || !*origin) return NULL;
    size_t olen = strlen(origin), len;
    const char *p = list, *start;
    while ((start = cy_list_next(&p, &len))) {
        if (len == 1 && *start == '*') return "*";
        if (len && len == olen && strncasecmp(start, origin, len) == 0) return origin;
    }
    return NULL;
}
